output "bucket" {
  description = "[store.s3] bucket in the daemon's config."
  value       = minio_s3_bucket.archive.bucket
}

output "daemon_access_key" {
  description = "The daemon's service account: AWS_ACCESS_KEY_ID in its environment."
  value       = minio_iam_service_account.daemon.access_key
}

output "daemon_secret_key" {
  description = "AWS_SECRET_ACCESS_KEY in the daemon's environment (keep it out of the config file)."
  value       = minio_iam_service_account.daemon.secret_key
  sensitive   = true
}

output "reader_access_key" {
  description = "The read-only service account's access key."
  value       = minio_iam_service_account.reader.access_key
}

output "reader_secret_key" {
  description = "The read-only service account's secret key."
  value       = minio_iam_service_account.reader.secret_key
  sensitive   = true
}

output "wormvault_store_config" {
  description = "The [store] section for the daemon's config file (add endpoint)."
  value       = <<-EOT
    [store]
    kind = "s3"
    prefix = "${var.prefix}"

    [store.s3]
    bucket = "${minio_s3_bucket.archive.bucket}"
    force_path_style = true

    [upload]
    min_default_retention_days = ${var.default_retention_days}
  EOT
}
