variable "minio_server" {
  description = "MinIO's host:port."
  type        = string
}

variable "bucket_name" {
  description = "The archive bucket."
  type        = string
  default     = "wormvault-archive"
}

variable "default_retention_days" {
  description = "Default COMPLIANCE retention, in days."
  type        = number
  default     = 2192
}

variable "create_kms_key" {
  description = "Create the bucket's KES key (false when it already exists)."
  type        = bool
  default     = true
}
