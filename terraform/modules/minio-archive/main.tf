# The archive bucket on MinIO, with the same intent as modules/aws-archive: object locking
# at creation, versioning, a COMPLIANCE default retention, SSE-KMS, a bucket policy that
# refuses deletion and lock changes, and least-privilege service accounts for the daemon
# (write, never delete) and for sweeps and retrieval (read only).
#
# MinIO enforces COMPLIANCE retention for every user, the root user included.

locals {
  bucket_arn = "arn:aws:s3:::${var.bucket_name}"
  objects    = "${local.bucket_arn}/${var.prefix}*"

  read_object_actions = [
    "s3:GetObject",
    "s3:GetObjectVersion",
    "s3:GetObjectRetention",
    "s3:GetObjectLegalHold",
  ]
  read_bucket_actions = [
    "s3:ListBucket",
    "s3:ListBucketVersions",
    "s3:GetBucketVersioning",
    "s3:GetBucketObjectLockConfiguration",
    "s3:GetBucketLocation",
  ]
}

resource "minio_s3_bucket" "archive" {
  bucket         = var.bucket_name
  object_locking = true
  force_destroy  = false
  acl            = "private"
}

resource "minio_s3_bucket_versioning" "archive" {
  bucket = minio_s3_bucket.archive.bucket
  versioning_configuration {
    status = "Enabled"
  }
}

resource "minio_s3_bucket_object_lock_configuration" "archive" {
  bucket              = minio_s3_bucket.archive.bucket
  object_lock_enabled = "Enabled"
  rule {
    default_retention {
      mode = "COMPLIANCE"
      days = var.default_retention_days
    }
  }
  depends_on = [minio_s3_bucket_versioning.archive]
}

resource "minio_kms_key" "archive" {
  count  = var.create_kms_key ? 1 : 0
  key_id = var.kms_key_id
}

resource "minio_s3_bucket_server_side_encryption" "archive" {
  bucket          = minio_s3_bucket.archive.bucket
  encryption_type = "aws:kms"
  kms_key_id      = var.kms_key_id
  depends_on      = [minio_kms_key.archive]
}

data "minio_iam_policy_document" "bucket" {
  statement {
    sid    = "DenyDeletionAndLockChanges"
    effect = "Deny"
    actions = [
      "s3:DeleteObject",
      "s3:DeleteObjectVersion",
      "s3:BypassGovernanceRetention",
      "s3:PutBucketObjectLockConfiguration",
      "s3:PutBucketVersioning",
      "s3:PutLifecycleConfiguration",
      "s3:DeleteBucket",
      "s3:DeleteBucketPolicy",
    ]
    resources = [local.bucket_arn, "${local.bucket_arn}/*"]
    principal = "*"
  }
}

resource "minio_s3_bucket_policy" "archive" {
  bucket = minio_s3_bucket.archive.bucket
  policy = data.minio_iam_policy_document.bucket.json
  depends_on = [
    minio_s3_bucket_versioning.archive,
    minio_s3_bucket_object_lock_configuration.archive,
  ]
}

# ---------------------------------------------------------------- the daemon

data "minio_iam_policy_document" "daemon" {
  statement {
    sid       = "ReadBucket"
    actions   = local.read_bucket_actions
    resources = [local.bucket_arn]
  }
  statement {
    sid       = "WriteAndReadObjects"
    actions   = concat(["s3:PutObject", "s3:PutObjectRetention"], local.read_object_actions)
    resources = [local.objects]
  }
}

resource "minio_iam_policy" "daemon" {
  name   = "${var.bucket_name}-daemon"
  policy = data.minio_iam_policy_document.daemon.json
}

resource "minio_iam_user" "daemon" {
  name = var.daemon_user
}

resource "minio_iam_user_policy_attachment" "daemon" {
  user_name   = minio_iam_user.daemon.id
  policy_name = minio_iam_policy.daemon.id
}

resource "minio_iam_service_account" "daemon" {
  target_user = minio_iam_user.daemon.name
  description = "wormvault daemon for ${var.bucket_name}"
  policy      = data.minio_iam_policy_document.daemon.json
}

# ---------------------------------------------------------------- read only

data "minio_iam_policy_document" "reader" {
  statement {
    sid       = "ReadBucket"
    actions   = local.read_bucket_actions
    resources = [local.bucket_arn]
  }
  statement {
    sid       = "ReadObjects"
    actions   = local.read_object_actions
    resources = [local.objects]
  }
}

resource "minio_iam_policy" "reader" {
  name   = "${var.bucket_name}-reader"
  policy = data.minio_iam_policy_document.reader.json
}

resource "minio_iam_user" "reader" {
  name = var.reader_user
}

resource "minio_iam_user_policy_attachment" "reader" {
  user_name   = minio_iam_user.reader.id
  policy_name = minio_iam_policy.reader.id
}

resource "minio_iam_service_account" "reader" {
  target_user = minio_iam_user.reader.name
  description = "wormvault read-only for ${var.bucket_name}"
  policy      = data.minio_iam_policy_document.reader.json
}
