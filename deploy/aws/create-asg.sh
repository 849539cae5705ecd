#!/usr/bin/env bash
# EXAMPLE TO ADAPT: an EC2 Auto Scaling group of fleetrun workers, scaled on the queue depth.
#
# Creates (AWS CLI v2, credentials allowed to manage IAM, EC2 and Auto Scaling):
#   - an IAM role and instance profile for the workers: read/write on your jobs' bucket, and
#     CompleteLifecycleAction on the group (the drain service finishes the termination hook);
#   - a launch template booting deploy/cloud-init/aws-asg-worker.yaml (edit its CHANGE_ME values
#     first), with IMDSv2 required (the drain service reads spot and lifecycle notices there);
#   - the Auto Scaling group, with a termination lifecycle hook that holds a scaled-in instance
#     until its workers drained (or the hook's timeout passed);
#   - a target-tracking policy on the backlog per instance: the custom CloudWatch metric
#     Fleetrun/FleetrunQueueDepth divided by the group's InService instances.
#
# The queue depth: EC2 Auto Scaling cannot read RabbitMQ. The coordinator's machine publishes it
# every minute (deploy/systemd/fleetrun-queue-depth.timer running deploy/scripts/publish-queue-depth
# with METRIC_CLOUD=aws: `aws cloudwatch put-metric-data`); its role needs
# cloudwatch:PutMetricData. Target tracking with metric math cannot scale out from zero
# instances (the backlog per instance is undefined there), so MIN_SIZE defaults to 1; for scale
# to zero add a step-scaling policy on an alarm FleetrunQueueDepth > 0 that sets the capacity to 1.
#
# The broker and the coordinator are not created here: the instances must reach the broker
# (SUBNET_IDS and SECURITY_GROUP_ID in its VPC).
#
# Usage: edit the settings below (or set them in the environment), then
#   bash deploy/aws/create-asg.sh
set -euo pipefail

export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-eu-west-1}"
NAME="${NAME:-fleetrun-workers}"
INSTANCE_TYPE="${INSTANCE_TYPE:-m6i.xlarge}"
# Ubuntu 24.04 LTS (fleetrun needs Python 3.11+: not Ubuntu 22.04), from Canonical's SSM parameter.
AMI_PARAMETER="${AMI_PARAMETER:-/aws/service/canonical/ubuntu/server/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id}"
SUBNET_IDS="${SUBNET_IDS:?set SUBNET_IDS to comma-separated subnet ids that reach the broker}"
SECURITY_GROUP_ID="${SECURITY_GROUP_ID:?set SECURITY_GROUP_ID (outbound to the broker and S3)}"
BUCKET="${BUCKET:?set BUCKET to the S3 bucket of your jobs}"
# Must match DRAIN_AWS_LIFECYCLE_HOOK in the cloud-init file (and NAME its DRAIN_AWS_ASG_NAME).
LIFECYCLE_HOOK="${LIFECYCLE_HOOK:-fleetrun-drain}"
# Seconds a terminating instance is held for its drain: above the workers' TimeoutStopSec (120 s).
DRAIN_SECONDS="${DRAIN_SECONDS:-300}"
MIN_SIZE="${MIN_SIZE:-1}"
MAX_SIZE="${MAX_SIZE:-10}"
DESIRED="${DESIRED:-1}"
# Target of the tracking policy: waiting batches per InService instance.
BACKLOG_PER_INSTANCE="${BACKLOG_PER_INSTANCE:-20}"
# The fleetrun namespace whose queue depth the coordinator publishes (the metric's dimension).
FLEETRUN_NAMESPACE="${FLEETRUN_NAMESPACE:-fleetrun}"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLOUD_INIT="${CLOUD_INIT:-$HERE/../cloud-init/aws-asg-worker.yaml}"

if grep -q CHANGE_ME "$CLOUD_INIT"; then
    echo "create-asg.sh: edit the CHANGE_ME values of $CLOUD_INIT first." >&2
    exit 2
fi

account_id="$(aws sts get-caller-identity --query Account --output text)"
group_arn="arn:aws:autoscaling:$AWS_DEFAULT_REGION:$account_id:autoScalingGroup:*:autoScalingGroupName/$NAME"

# -- the workers' role --------------------------------------------------------------------------
aws iam create-role --role-name "$NAME" --output text --query Role.Arn \
    --assume-role-policy-document '{
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                       "Action": "sts:AssumeRole"}]}'
aws iam put-role-policy --role-name "$NAME" --policy-name fleetrun-worker \
    --policy-document "{
        \"Version\": \"2012-10-17\",
        \"Statement\": [
            {\"Effect\": \"Allow\", \"Action\": [\"s3:ListBucket\", \"s3:GetBucketLocation\"],
             \"Resource\": \"arn:aws:s3:::$BUCKET\"},
            {\"Effect\": \"Allow\", \"Action\": [\"s3:GetObject\", \"s3:PutObject\", \"s3:DeleteObject\"],
             \"Resource\": \"arn:aws:s3:::$BUCKET/*\"},
            {\"Effect\": \"Allow\", \"Action\": \"autoscaling:CompleteLifecycleAction\",
             \"Resource\": \"$group_arn\"}]}"
aws iam create-instance-profile --instance-profile-name "$NAME" --output none
aws iam add-role-to-instance-profile --instance-profile-name "$NAME" --role-name "$NAME"
aws iam wait instance-profile-exists --instance-profile-name "$NAME"
# A new instance profile takes a few seconds more before EC2 accepts it.
sleep 10

# -- the launch template --------------------------------------------------------------------------
ami_id="$(aws ssm get-parameter --name "$AMI_PARAMETER" --query Parameter.Value --output text)"
user_data="$(base64 -w0 "$CLOUD_INIT")"
# IMDSv2 only (HttpTokens=required); hop limit 1: only the host, not containers, reads it.
aws ec2 create-launch-template --launch-template-name "$NAME" --output none \
    --launch-template-data "{
        \"ImageId\": \"$ami_id\",
        \"InstanceType\": \"$INSTANCE_TYPE\",
        \"IamInstanceProfile\": {\"Name\": \"$NAME\"},
        \"SecurityGroupIds\": [\"$SECURITY_GROUP_ID\"],
        \"UserData\": \"$user_data\",
        \"MetadataOptions\": {\"HttpEndpoint\": \"enabled\", \"HttpTokens\": \"required\",
                              \"HttpPutResponseHopLimit\": 1},
        \"TagSpecifications\": [{\"ResourceType\": \"instance\",
                                \"Tags\": [{\"Key\": \"Name\", \"Value\": \"$NAME\"}]}]}"

# -- the group, with its termination hook ---------------------------------------------------------
# The hook holds a terminating instance in Terminating:Wait, which its metadata shows as
# target-lifecycle-state Terminated: the drain service stops the workers (they drain), then
# completes the hook; if it never does, DefaultResult=CONTINUE ends the instance after
# DRAIN_SECONDS.
aws autoscaling create-auto-scaling-group \
    --auto-scaling-group-name "$NAME" \
    --launch-template "LaunchTemplateName=$NAME,Version=\$Latest" \
    --min-size "$MIN_SIZE" --max-size "$MAX_SIZE" --desired-capacity "$DESIRED" \
    --vpc-zone-identifier "$SUBNET_IDS" \
    --lifecycle-hook-specification-list \
    "LifecycleHookName=$LIFECYCLE_HOOK,LifecycleTransition=autoscaling:EC2_INSTANCE_TERMINATING,HeartbeatTimeout=$DRAIN_SECONDS,DefaultResult=CONTINUE"

# The InService count feeds the backlog-per-instance metric below.
aws autoscaling enable-metrics-collection --auto-scaling-group-name "$NAME" \
    --granularity 1Minute --metrics GroupInServiceInstances

# -- scaling on the backlog per instance ----------------------------------------------------------
# FleetrunQueueDepth / GroupInServiceInstances kept near BACKLOG_PER_INSTANCE: the group grows
# while batches pile up and shrinks when they do not. The depth counts the waiting batches only,
# so scale-ins come while the last batches run; each terminating instance drains first.
aws autoscaling put-scaling-policy \
    --auto-scaling-group-name "$NAME" \
    --policy-name fleetrun-backlog-per-instance \
    --policy-type TargetTrackingScaling \
    --output none \
    --target-tracking-configuration "{
        \"TargetValue\": $BACKLOG_PER_INSTANCE,
        \"CustomizedMetricSpecification\": {
            \"Metrics\": [
                {\"Id\": \"depth\", \"ReturnData\": false,
                 \"MetricStat\": {\"Stat\": \"Average\", \"Metric\": {
                     \"Namespace\": \"Fleetrun\", \"MetricName\": \"FleetrunQueueDepth\",
                     \"Dimensions\": [{\"Name\": \"FleetrunNamespace\",
                                       \"Value\": \"$FLEETRUN_NAMESPACE\"}]}}},
                {\"Id\": \"instances\", \"ReturnData\": false,
                 \"MetricStat\": {\"Stat\": \"Average\", \"Metric\": {
                     \"Namespace\": \"AWS/AutoScaling\", \"MetricName\": \"GroupInServiceInstances\",
                     \"Dimensions\": [{\"Name\": \"AutoScalingGroupName\", \"Value\": \"$NAME\"}]}}},
                {\"Id\": \"backlog_per_instance\", \"Expression\": \"depth / instances\",
                 \"Label\": \"Waiting fleetrun batches per instance\", \"ReturnData\": true}]}}"

cat <<EOT
Auto Scaling group $NAME created.
On the coordinator's machine (its role needs cloudwatch:PutMetricData), publish the queue depth:
  install -m 0755 deploy/scripts/publish-queue-depth /opt/fleetrun/bin/
  cp deploy/systemd/fleetrun-queue-depth.{service,timer} /etc/systemd/system/
  printf 'METRIC_CLOUD=aws\nAWS_DEFAULT_REGION=%s\n' '$AWS_DEFAULT_REGION' \\
      > /etc/fleetrun/queue-depth.env
  systemctl daemon-reload && systemctl enable --now fleetrun-queue-depth.timer
EOT
