{{/* ---- names and labels ------------------------------------------------------------------- */}}

{{- define "vgpu-pool.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vgpu-pool.fullname" -}}
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

{{- define "vgpu-pool.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; call with (dict "ctx" $ "component" "node-agent"). */}}
{{- define "vgpu-pool.labels" -}}
helm.sh/chart: {{ include "vgpu-pool.chart" .ctx }}
{{ include "vgpu-pool.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: vgpu-pool
{{- end }}

{{- define "vgpu-pool.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vgpu-pool.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "vgpu-pool.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}


{{- define "vgpu-pool.deviceConfigName" -}}
{{- .Values.deviceConfig.name | default (printf "%s-device-config" (include "vgpu-pool.fullname" .)) }}
{{- end }}

{{- define "vgpu-pool.agentServiceAccount" -}}
{{- printf "%s-node-agent" (include "vgpu-pool.fullname" .) }}
{{- end }}

{{- define "vgpu-pool.signingSecretName" -}}
{{- .Values.signingKey.existingSecret | default (printf "%s-signing-key" (include "vgpu-pool.fullname" .)) }}
{{- end }}

{{/* The namespace and service account of the pod that runs the sidecar. */}}
{{- define "vgpu-pool.schedulerNamespace" -}}
{{- if eq .Values.scheduler.mode "deploy" }}{{ .Release.Namespace }}{{ else }}{{ .Values.scheduler.existing.namespace }}{{ end }}
{{- end }}

{{- define "vgpu-pool.schedulerServiceAccount" -}}
{{- if eq .Values.scheduler.mode "deploy" }}
{{- .Values.scheduler.deploy.serviceAccount | default (printf "%s-scheduler" (include "vgpu-pool.fullname" .)) }}
{{- else }}
{{- .Values.scheduler.existing.serviceAccount }}
{{- end }}
{{- end }}

{{- define "vgpu-pool.checkMode" -}}
{{- if not (has .Values.scheduler.mode (list "deploy" "sidecar-only")) }}
{{- fail (printf "scheduler.mode must be deploy or sidecar-only, not %q" .Values.scheduler.mode) }}
{{- end }}
{{- end }}

{{/* ---- the device config ------------------------------------------------------------------ */}}

{{/* The shipped (or overriding) device config, as text. */}}
{{- define "vgpu-pool.deviceConfigBase" -}}
{{- if .Values.deviceConfig.override }}{{ .Values.deviceConfig.override }}{{ else }}{{ .Files.Get "files/device-config.yaml" }}{{ end }}
{{- end }}

{{/* The effective device config as JSON: the base with the values' settings applied. */}}
{{- define "vgpu-pool.deviceConfigJson" -}}
{{- $cfg := include "vgpu-pool.deviceConfigBase" . | fromYaml }}
{{- if hasKey $cfg "Error" }}
{{- fail (printf "deviceConfig: the device config is not valid YAML: %s" (get $cfg "Error")) }}
{{- end }}
{{- $dc := .Values.deviceConfig }}
{{- $nv := get $cfg "nvidia" | default dict }}
{{- $sch := get $cfg "scheduler" | default dict }}
{{- range $k, $v := ($dc.nvidia | default dict) }}
{{- $_ := set $nv $k $v }}
{{- end }}
{{- $rn := $dc.resourceNames | default dict }}
{{- range $field, $key := dict "count" "resourceCountName" "memory" "resourceMemoryName" "memoryPercentage" "resourceMemoryPercentageName" "cores" "resourceCoreName" }}
{{- if get $rn $field }}{{ $_ := set $nv $key (get $rn $field) }}{{ end }}
{{- end }}
{{- if $dc.knownMigGeometries }}{{ $_ := set $nv "knownMigGeometries" $dc.knownMigGeometries }}{{ end }}
{{- if $dc.nodeconfig }}{{ $_ := set $nv "nodeconfig" $dc.nodeconfig }}{{ end }}
{{- $policy := $dc.policy | default dict }}
{{- if $policy.nodePolicy }}{{ $_ := set $sch "nodePolicy" $policy.nodePolicy }}{{ end }}
{{- if $policy.gpuPolicy }}{{ $_ := set $sch "gpuPolicy" $policy.gpuPolicy }}{{ end }}
{{- if $dc.weights }}
{{- $w := get $sch "weights" | default dict }}
{{- range $k, $v := $dc.weights }}{{ $_ := set $w $k $v }}{{ end }}
{{- $_ := set $sch "weights" $w }}
{{- end }}
{{- $_ := set $cfg "nvidia" $nv }}
{{- if $sch }}{{ $_ := set $cfg "scheduler" $sch }}{{ end }}
{{- toJson $cfg }}
{{- end }}

{{/* The ConfigMap's text: the base file verbatim when no setting changes it, else re-rendered. */}}
{{- define "vgpu-pool.deviceConfigText" -}}
{{- $base := include "vgpu-pool.deviceConfigBase" . }}
{{- $effective := include "vgpu-pool.deviceConfigJson" . }}
{{- if eq $effective ($base | fromYaml | toJson) }}
{{- $base }}
{{- else }}
{{- printf "# vgpu-pool device config, rendered by the Helm chart from %s and its values.\n" (ternary "deviceConfig.override" "the shipped device-config.yaml" (ne .Values.deviceConfig.override "")) }}
{{- $effective | fromJson | toYaml }}
{{- end }}
{{- end }}

{{/* The resource names the sidecar manages (extender.managedResources), one per line. */}}
{{- define "vgpu-pool.managedResources" -}}
{{- $nv := (include "vgpu-pool.deviceConfigJson" . | fromJson).nvidia | default dict }}
{{- $defaults := dict "resourceCountName" "nvidia.com/gpu" "resourceMemoryName" "nvidia.com/gpumem" "resourceMemoryPercentageName" "nvidia.com/gpumem-percentage" "resourceCoreName" "nvidia.com/gpucores" }}
{{- range $key := list "resourceCountName" "resourceMemoryName" "resourceMemoryPercentageName" "resourceCoreName" }}
{{- $name := ternary (get $nv $key) (get $defaults $key) (hasKey $nv $key) }}
{{- if $name }}
- {{ $name }}
{{- end }}
{{- end }}
{{- end }}

{{/* ---- the scheduler configuration -------------------------------------------------------- */}}

{{/* The extender plugin entry of a vc-scheduler tier. */}}
{{- define "vgpu-pool.extenderPlugin" -}}
- name: extender
  arguments:
    extender.urlPrefix: http://127.0.0.1:{{ .Values.sidecar.port }}
    extender.httpTimeout: {{ .Values.scheduler.extender.httpTimeout }}
    extender.onSessionCloseVerb: onSessionClose
    extender.predicateVerb: predicate
    extender.prioritizeVerb: prioritize
    extender.allocateFuncVerb: allocate      # Volcano >= 1.13
    extender.deallocateFuncVerb: deallocate  # Volcano >= 1.13
    extender.ignorable: {{ .Values.scheduler.extender.ignorable }}
    extender.managedResources:               # a YAML list (a comma string makes vc-scheduler exit)
    {{- include "vgpu-pool.managedResources" . | trim | nindent 4 }}
{{- end }}

{{/* A whole volcano-scheduler.conf with the sidecar as the extender. */}}
{{- define "vgpu-pool.schedulerConf" -}}
{{- if .Values.scheduler.conf.override }}
{{- .Values.scheduler.conf.override }}
{{- else -}}
# vc-scheduler configuration with the vgpu-pool sidecar as its extender (rendered by the chart).
# onSessionOpen stays off: it carries the whole cluster every session.
actions: {{ .Values.scheduler.conf.actions | quote }}
tiers:
- plugins:
  - name: priority
  - name: gang
    enablePreemptable: false
  - name: conformance
- plugins:
  - name: overcommit
  - name: drf
    enablePreemptable: false
  - name: predicates
  - name: deviceshare
    arguments:
      deviceshare.VGPUEnable: false      # vgpu-pool owns the GPU resources: never both
  {{- include "vgpu-pool.extenderPlugin" . | nindent 2 }}
  - name: proportion
  - name: nodeorder
  - name: binpack
{{- end }}
{{- end }}

{{/* ---- the sidecar container (both modes) ------------------------------------------------ */}}


{{- define "vgpu-pool.sidecarContainer" -}}
- name: vgpu-pool-sidecar
  image: {{ include "vgpu-pool.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["vcplugin", "serve"]
  args:
    - --listen=127.0.0.1:{{ .Values.sidecar.port }}
    {{- if .Values.metrics.enabled }}
    - --metrics-listen=0.0.0.0:{{ .Values.sidecar.metricsPort }}
    {{- end }}
    - --config-map={{ .Release.Namespace }}/{{ include "vgpu-pool.deviceConfigName" . }}
    - --signing-key-file=/etc/vgpu-pool/signing/{{ .Values.signingKey.secretKey }}
    - --max-body-mib={{ .Values.sidecar.maxBodyMiB }}
    - --log-level={{ .Values.logLevel }}
    - --log-format={{ .Values.logFormat }}
    {{- if not .Values.sidecar.assignAtBind }}
    - --no-assign-at-bind
    {{- end }}
    {{- range .Values.sidecar.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  {{- if .Values.metrics.enabled }}
  ports:
    - name: http-metrics
      containerPort: {{ .Values.sidecar.metricsPort }}
      protocol: TCP
  {{- end }}
  # Probes run inside the container: the extender verbs listen on the loopback only.
  readinessProbe:
    exec:
      command: ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{{ .Values.sidecar.port }}/readyz', timeout=3)"]
    periodSeconds: 10
    timeoutSeconds: 5
  livenessProbe:
    exec:
      command: ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{{ .Values.sidecar.port }}/healthz', timeout=3)"]
    initialDelaySeconds: 10
    periodSeconds: 20
    timeoutSeconds: 5
    failureThreshold: 3
  resources:
    {{- toYaml .Values.sidecar.resources | nindent 4 }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: ["ALL"]
    seccompProfile:
      type: RuntimeDefault
  volumeMounts:
    - name: vgpu-pool-signing-key
      mountPath: /etc/vgpu-pool/signing
      readOnly: true
    - name: vgpu-pool-tmp
      mountPath: /tmp
{{- end }}

{{- define "vgpu-pool.sidecarVolumes" -}}
- name: vgpu-pool-signing-key
  secret:
    secretName: {{ include "vgpu-pool.signingSecretName" . }}
    defaultMode: 0444   # the sidecar runs as 65532 and the Secret files belong to root
    items:
      - key: {{ .Values.signingKey.secretKey }}
        path: {{ .Values.signingKey.secretKey }}
- name: vgpu-pool-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}
