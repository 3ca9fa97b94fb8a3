{{/*
Chart name, truncated to the 63 characters a label value allows.
*/}}
{{- define "cdp-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: the release name when it already contains the
chart name (so `helm install cdp-operator ...` gives plain "cdp-operator").
*/}}
{{- define "cdp-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "cdp-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "cdp-operator.labels" -}}
helm.sh/chart: {{ include "cdp-operator.chart" . }}
{{ include "cdp-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: cdp
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels: never change them in an upgrade (Deployment selectors are immutable).
*/}}
{{- define "cdp-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cdp-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "cdp-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cdp-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cdp-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
What the operator does with the API, in every namespace it watches: exactly the verbs
it uses. Keep in sync with config/rbac/role.yaml (scripts/validate-manifests.sh
compares the two).
*/}}
{{- define "cdp-operator.rules" -}}
# The custom resources: read and watch them; users and GitOps tools own them.
- apiGroups: ["cdp.dev"]
  resources:
    - customerdataplatforms
    - sources
    - matchingpolicies
    - feeds
    - scalingpolicies
    - enrichers
  verbs: ["get", "list", "watch"]
# Status is written with server-side apply on the status subresource.
- apiGroups: ["cdp.dev"]
  resources:
    - customerdataplatforms/status
    - sources/status
    - matchingpolicies/status
    - feeds/status
    - scalingpolicies/status
    - enrichers/status
  verbs: ["patch"]
# Owner references with blockOwnerDeletion need this where OwnerReferencesPermissionEnforcement
# is on (OpenShift); no finalizer is ever set.
- apiGroups: ["cdp.dev"]
  resources: ["customerdataplatforms/finalizers"]
  verbs: ["update"]
# What a platform is rendered into: server-side apply (create + patch). Deletion happens by
# garbage collection; "delete" is what OwnerReferencesPermissionEnforcement requires of
# whoever sets an owner reference. Kinds whose state the operator reads are also watched.
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["create", "patch", "delete"]
# Secrets: reads the ones the custom resources reference (watching metadata only), creates
# the generated PostgreSQL password Secret.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch"]
# KEDA mode: ScaledObjects instead of the built-in scaler; leaving KEDA mode deletes them.
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["get", "create", "patch", "delete"]
# KEDA mode: the credentials of Kafka Sources' triggers; those no longer needed are deleted.
- apiGroups: ["keda.sh"]
  resources: ["triggerauthentications"]
  verbs: ["list", "create", "patch", "delete"]
# The scaler finds the ready pods of the scaled workloads and reads their load (GET /v1/load).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# Whether the store's data volume exists before generating a password for it.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get"]
# Events about the custom resources (kube's recorder uses events.k8s.io/v1).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
