#!/usr/bin/env bash
# EXAMPLE TO ADAPT: an Azure VM Scale Set of fleetrun workers, autoscaled on the queue depth.
#
# Creates (Azure CLI, logged in with `az login`, rights to create resources and role assignments):
#   - a resource group;
#   - a scale set of worker VMs booted with deploy/cloud-init/azure-vmss-worker.yaml (edit its
#     CHANGE_ME values first), with a system-assigned managed identity and a terminate
#     notification, so that a scale-in gives the VMs time to drain
#     (deploy/systemd/fleetrun-drain-on-termination.service);
#   - the role "Storage Blob Data Contributor" for that identity on your storage account;
#   - autoscale rules on the queue depth.
#
# Queue depth and autoscale, honestly: Azure Monitor autoscale cannot read RabbitMQ. The
# coordinator's machine publishes the depth every minute as a custom metric on the scale set
# (deploy/systemd/fleetrun-queue-depth.timer running deploy/scripts/publish-queue-depth with
# METRIC_CLOUD=azure), and the autoscale rules below read that metric (namespace `fleetrun`,
# name `QueueDepth`). Custom metrics are a preview feature of Azure Monitor and not in every
# region; the metric appears only after the first value is published; and autoscale acts on
# averages over minutes, so it follows a backlog, not a burst. If that does not fit, drop the
# rules and let the timer call `az vmss scale --new-capacity N` itself (a few lines in
# publish-queue-depth, with the Contributor role on the scale set instead of Monitoring Metrics
# Publisher). Either way the scale-in takes VMs at random, and each drains its batches first.
#
# The broker and the coordinator are not created here: the VMs must reach the broker (put the
# scale set in the broker's virtual network: VNET_NAME / SUBNET_NAME).
#
# Usage: edit the settings below (or set them in the environment), then
#   bash deploy/azure/create-vmss.sh
set -euo pipefail

RESOURCE_GROUP="${RESOURCE_GROUP:-fleetrun}"
LOCATION="${LOCATION:-westeurope}"
VMSS_NAME="${VMSS_NAME:-fleetrun-workers}"
VM_SIZE="${VM_SIZE:-Standard_D4s_v5}"
# Ubuntu 24.04 LTS (fleetrun needs Python 3.11+: not Ubuntu 22.04).
IMAGE="${IMAGE:-Canonical:ubuntu-24_04-lts:server:latest}"
ADMIN_USER="${ADMIN_USER:-azureuser}"
VNET_NAME="${VNET_NAME:-}"
SUBNET_NAME="${SUBNET_NAME:-}"
# The storage account of your jobs' inputs and outputs (must exist).
STORAGE_ACCOUNT="${STORAGE_ACCOUNT:?set STORAGE_ACCOUNT to the storage account of your jobs}"
STORAGE_RESOURCE_GROUP="${STORAGE_RESOURCE_GROUP:-$RESOURCE_GROUP}"
# The principal id of the coordinator VM's managed identity, which publishes the queue depth
# (az vm identity show -g <rg> -n <vm> --query principalId -o tsv); empty: no role granted.
COORDINATOR_PRINCIPAL_ID="${COORDINATOR_PRINCIPAL_ID:-}"
# Minutes between a scale-in's notice and the VM's deletion (5 to 15): above the workers'
# TimeoutStopSec (120 s), so that a drain ends before the VM does.
TERMINATE_NOTICE_MINUTES="${TERMINATE_NOTICE_MINUTES:-10}"
MIN_COUNT="${MIN_COUNT:-0}"
MAX_COUNT="${MAX_COUNT:-10}"
INITIAL_COUNT="${INITIAL_COUNT:-1}"
# Add SCALE_OUT_STEP VMs every 5 minutes while more than SCALE_OUT_DEPTH batches wait (5-minute
# average; 0: any backlog, which also brings the set up from MIN_COUNT=0), up to MAX_COUNT;
# remove one VM every 10 minutes once no batch has waited for 15 minutes. The depth counts the
# waiting batches only, so the last VMs go while they run the last batches: each drains first.
SCALE_OUT_DEPTH="${SCALE_OUT_DEPTH:-0}"
SCALE_OUT_STEP="${SCALE_OUT_STEP:-2}"
# Spot VMs: set SPOT=1 (evictions drain on the 30 s Preempt notice: batches that run longer go
# back to the queue and cost a try).
SPOT="${SPOT:-0}"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLOUD_INIT="${CLOUD_INIT:-$HERE/../cloud-init/azure-vmss-worker.yaml}"

if grep -q CHANGE_ME "$CLOUD_INIT"; then
    echo "create-vmss.sh: edit the CHANGE_ME values of $CLOUD_INIT first." >&2
    exit 2
fi

az group create --name "$RESOURCE_GROUP" --location "$LOCATION" --output none

network_args=()
if [[ -n "$VNET_NAME" ]]; then
    network_args+=(--vnet-name "$VNET_NAME" --subnet "$SUBNET_NAME")
fi
spot_args=()
if [[ "$SPOT" == "1" ]]; then
    spot_args+=(--priority Spot --eviction-policy Delete --max-price -1)
fi

# Workers need no load balancer and no public address: they only connect out (to the broker
# and the storage). Manual upgrade policy: a model change never restarts busy workers by itself.
az vmss create \
    --resource-group "$RESOURCE_GROUP" \
    --name "$VMSS_NAME" \
    --image "$IMAGE" \
    --vm-sku "$VM_SIZE" \
    --instance-count "$INITIAL_COUNT" \
    --admin-username "$ADMIN_USER" \
    --generate-ssh-keys \
    --custom-data "$CLOUD_INIT" \
    --assign-identity "[system]" \
    --terminate-notification-time "$TERMINATE_NOTICE_MINUTES" \
    --upgrade-policy-mode Manual \
    --load-balancer "" \
    --public-ip-address "" \
    "${network_args[@]}" \
    "${spot_args[@]}" \
    --output none

vmss_id="$(az vmss show -g "$RESOURCE_GROUP" -n "$VMSS_NAME" --query id -o tsv)"
principal_id="$(az vmss identity show -g "$RESOURCE_GROUP" -n "$VMSS_NAME" \
    --query principalId -o tsv)"
storage_id="$(az storage account show -g "$STORAGE_RESOURCE_GROUP" -n "$STORAGE_ACCOUNT" \
    --query id -o tsv)"

# The workers read inputs and write result parts with the managed identity (adlfs finds it
# through DefaultAzureCredential when only AZURE_STORAGE_ACCOUNT_NAME is set).
az role assignment create \
    --assignee-object-id "$principal_id" \
    --assignee-principal-type ServicePrincipal \
    --role "Storage Blob Data Contributor" \
    --scope "$storage_id" \
    --output none

# The coordinator's machine publishes the queue depth as a metric of this scale set.
if [[ -n "$COORDINATOR_PRINCIPAL_ID" ]]; then
    az role assignment create \
        --assignee-object-id "$COORDINATOR_PRINCIPAL_ID" \
        --assignee-principal-type ServicePrincipal \
        --role "Monitoring Metrics Publisher" \
        --scope "$vmss_id" \
        --output none
fi

az monitor autoscale create \
    --resource-group "$RESOURCE_GROUP" \
    --name "$VMSS_NAME-autoscale" \
    --resource "$vmss_id" \
    --min-count "$MIN_COUNT" \
    --max-count "$MAX_COUNT" \
    --count "$INITIAL_COUNT" \
    --output none

# [fleetrun] QueueDepth: the custom metric published by the coordinator's timer.
az monitor autoscale rule create \
    --resource-group "$RESOURCE_GROUP" \
    --autoscale-name "$VMSS_NAME-autoscale" \
    --condition "[fleetrun] QueueDepth > $SCALE_OUT_DEPTH avg 5m" \
    --scale out "$SCALE_OUT_STEP" \
    --cooldown 5 \
    --output none
az monitor autoscale rule create \
    --resource-group "$RESOURCE_GROUP" \
    --autoscale-name "$VMSS_NAME-autoscale" \
    --condition "[fleetrun] QueueDepth < 1 avg 15m" \
    --scale in 1 \
    --cooldown 10 \
    --output none

cat <<EOT
Scale set $VMSS_NAME created in $RESOURCE_GROUP.
On the coordinator's machine, publish the queue depth for its autoscale rules:
  install -m 0755 deploy/scripts/publish-queue-depth /opt/fleetrun/bin/
  cp deploy/systemd/fleetrun-queue-depth.{service,timer} /etc/systemd/system/
  printf 'METRIC_CLOUD=azure\nMETRIC_AZURE_REGION=%s\nMETRIC_AZURE_RESOURCE_ID=%s\n' \\
      '$LOCATION' '$vmss_id' > /etc/fleetrun/queue-depth.env
  systemctl daemon-reload && systemctl enable --now fleetrun-queue-depth.timer
EOT
