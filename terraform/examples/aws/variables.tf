variable "bucket_prefix" {
  description = "Prefix of the bucket names, e.g. the firm's short name."
  type        = string
}

variable "region" {
  description = "The archive's region."
  type        = string
  default     = "us-east-1"
}

variable "replica_region" {
  description = "The replica's and the anchor mirror's region."
  type        = string
  default     = "us-west-2"
}

variable "default_retention_days" {
  description = "Default COMPLIANCE retention of every bucket, in days."
  type        = number
  default     = 2192
}

variable "break_glass_principal_arns" {
  description = "Principals exempt from the buckets' deny statements (none by default)."
  type        = list(string)
  default     = []
}

variable "reader_trusted_principals" {
  description = "Who may assume the read-only role (compliance staff's roles)."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags for everything."
  type        = map(string)
  default     = { application = "wormvault" }
}
