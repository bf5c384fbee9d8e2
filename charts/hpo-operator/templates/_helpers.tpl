{{/* Names, labels and the values derived from several others, in one place. */}}

{{- define "hpo-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hpo-operator.fullname" -}}
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

{{- define "hpo-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select a component's pods: include with (dict "ctx" $ "component" "operator"). */}}
{{- define "hpo-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hpo-operator.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The standard labels of every object: include with (dict "ctx" $ "component" "..."). */}}
{{- define "hpo-operator.labels" -}}
{{ include "hpo-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: hpo-operator
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
helm.sh/chart: {{ include "hpo-operator.chart" .ctx }}
{{- end }}

{{- define "hpo-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hpo-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The namespaces served, as JSON (empty: every namespace but the release's own, where the admin
     Secret lives; the operator serves that one only when it is listed). */}}
{{- define "hpo-operator.watchNamespaces" -}}
{{- if and (eq .Values.rbac.scope "namespaced") (empty .Values.watchNamespaces) }}
{{- fail "rbac.scope=namespaced needs watchNamespaces: list the namespaces whose studies the operator serves" }}
{{- end }}
{{- .Values.watchNamespaces | uniq | toJson }}
{{- end }}

{{/* Kopf peering: one object named after the release, cluster-scoped when every namespace is
     served, else one per served namespace (Kopf's choice, from --namespace). */}}
{{- define "hpo-operator.peeringName" -}}
{{- include "hpo-operator.fullname" . }}
{{- end }}

{{/* The MySQL server the operator provisions on by default, and its admin Secret. */}}
{{- define "hpo-operator.mysql.host" -}}
{{- if .Values.mysql.enabled }}
{{- printf "%s-mysql.%s.svc" (include "hpo-operator.fullname" .) .Release.Namespace }}
{{- else }}
{{- required "mysql.external.host is required when mysql.enabled is false" .Values.mysql.external.host }}
{{- end }}
{{- end }}

{{- define "hpo-operator.mysql.port" -}}
{{- if .Values.mysql.enabled }}{{ .Values.mysql.port }}{{ else }}{{ .Values.mysql.external.port }}{{ end }}
{{- end }}

{{- define "hpo-operator.mysql.generatedSecretName" -}}
{{- printf "%s-mysql-admin" (include "hpo-operator.fullname" .) }}
{{- end }}

{{/* The admin Secret as env entries (secretKeyRef): include with (dict "ctx" $ "user" "VAR" "password" "VAR"). */}}
{{- define "hpo-operator.mysql.adminEnv" -}}
{{- $v := .ctx.Values.mysql }}
{{- if $v.enabled }}
{{- $secret := default (include "hpo-operator.mysql.generatedSecretName" .ctx) $v.existingSecret -}}
- name: {{ .user }}
  value: root
- name: {{ .password }}
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: password}
{{- else }}
{{- $secret := required "mysql.external.adminSecret.name is required when mysql.enabled is false" $v.external.adminSecret.name -}}
- name: {{ .user }}
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: {{ $v.external.adminSecret.usernameKey }}}
- name: {{ .password }}
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: {{ $v.external.adminSecret.passwordKey }}}
{{- end }}
{{- end }}

{{/* The restricted Pod Security level: pod and container parts. */}}
{{- define "hpo-operator.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "hpo-operator.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop: [ALL]
{{- end }}

{{/* What the operator does in the namespaces it serves (verified against kube.py, reconcile.py and
     Kopf 1.45: watching, patching finalizers/annotations, posting core v1 Events; reading the admin and
     CA Secrets a study names, writing the study's two storage Secrets; checking that the claims a study
     names exist; a server-side dry-run of a study's first trial Job uses jobs create; with Kueue, checking
     that a study's LocalQueue exists and reading its trial Jobs' Workloads, harmless where Kueue is absent). */}}
{{- define "hpo-operator.namespacedRules" -}}
- apiGroups: [hpo.dev]
  resources: [hpostudies]
  verbs: [list, watch, patch]
- apiGroups: [hpo.dev]
  resources: [hpostudies/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, watch, create, delete]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, patch]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [kueue.x-k8s.io]
  resources: [localqueues]
  verbs: [get]
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [list]
{{- end }}

{{/* Kopf's discovery of CRDs (and of namespaces when it serves a list of them), cluster-wide. */}}
{{- define "hpo-operator.discoveryRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if ne (include "hpo-operator.watchNamespaces" . ) "[]" }}
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end }}

{{/* Kopf peering: watch every peering object of the kind, keep-alives only into ours. */}}
{{- define "hpo-operator.peeringRules" -}}
{{- $kind := ternary "clusterkopfpeerings" "kopfpeerings" (eq (include "hpo-operator.watchNamespaces" .) "[]") -}}
- apiGroups: [kopf.dev]
  resources: [{{ $kind }}]
  verbs: [list, watch]
- apiGroups: [kopf.dev]
  resources: [{{ $kind }}]
  resourceNames: [{{ include "hpo-operator.peeringName" . }}]
  verbs: [patch]
{{- end }}
