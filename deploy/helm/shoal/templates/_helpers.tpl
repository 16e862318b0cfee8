{{/* Names and labels shared by every object of the chart. */}}

{{- define "shoal.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "shoal.labels" -}}
app.kubernetes.io/name: shoal
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "shoal.selector" -}}
app.kubernetes.io/name: shoal
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "shoal.image" -}}
{{- printf "%s:%s" .repository (toString .tag) -}}
{{- end -}}

{{/* NATS and logging settings every Shoal process takes. */}}
{{- define "shoal.commonEnv" -}}
- name: SHOAL_NATS_URL
  value: {{ join "," .Values.nats.urls | quote }}
- name: SHOAL_REPLICAS
  value: {{ .Values.nats.replicas | quote }}
- name: SHOAL_PREFIX
  value: {{ .Values.nats.prefix | quote }}
- name: SHOAL_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: SHOAL_LOG_FORMAT
  value: json
{{- end -}}

{{/* Extra SHOAL_* settings from a map, in a stable order. */}}
{{- define "shoal.extraEnv" -}}
{{- range $k, $v := . }}
- name: {{ $k }}
  value: {{ toString $v | quote }}
{{- end -}}
{{- end -}}
