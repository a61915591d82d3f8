output "wormvault_store_config" {
  description = "The daemon's [store] and [upload] settings."
  value       = <<-EOT
    ${module.archive.wormvault_store_config}
    # [store.s3] endpoint:
    # endpoint = "https://${var.minio_server}"
  EOT
}

output "daemon_access_key" {
  description = "AWS_ACCESS_KEY_ID for the daemon."
  value       = module.archive.daemon_access_key
}

output "daemon_secret_key" {
  description = "AWS_SECRET_ACCESS_KEY for the daemon."
  value       = module.archive.daemon_secret_key
  sensitive   = true
}

output "reader_access_key" {
  description = "The read-only service account."
  value       = module.archive.reader_access_key
}

output "reader_secret_key" {
  description = "Its secret."
  value       = module.archive.reader_secret_key
  sensitive   = true
}
