# The archive bucket as wormvault requires it (docs/DEPLOY.md):
#
#   - Object Lock enabled at creation, with a COMPLIANCE default retention: no one, the account
#     root included, can delete or shorten a locked version before its retain-until;
#   - versioning (Object Lock requires it; a delete without a version id only adds a marker);
#   - SSE-KMS under a key of its own, rotated yearly;
#   - no public access, ACLs disabled;
#   - a bucket policy that refuses plain HTTP, and refuses deletion, governance bypass and
#     changes to the lock, versioning and lifecycle configuration to everyone but the named
#     break-glass principals (none by default);
#   - server access logs in a separate bucket;
#   - one lifecycle rule, which only aborts incomplete multipart uploads (expiration rules
#     would add delete markers over records);
#   - optionally, replication of every new version to a locked bucket in another region.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

locals {
  account_root      = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"
  access_log_bucket = var.access_log_bucket != null ? var.access_log_bucket : aws_s3_bucket.access_logs[0].id
  # The break-glass exemption as a condition block; with no break-glass principal the deny
  # statements have no condition and apply to everyone.
  break_glass = length(var.break_glass_principal_arns) > 0 ? [var.break_glass_principal_arns] : []
}

# ---------------------------------------------------------------- encryption key

resource "aws_kms_key" "archive" {
  description             = "wormvault archive ${var.bucket_name}"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_days
  policy                  = data.aws_iam_policy_document.key.json
  tags                    = var.tags
}

resource "aws_kms_alias" "archive" {
  name          = "alias/wormvault-${var.bucket_name}"
  target_key_id = aws_kms_key.archive.key_id
}

data "aws_iam_policy_document" "key" {
  # A key policy's "*" resource is the key itself, and granting the account kms:* hands its
  # use to IAM policies (the AWS default key policy); the deny below is the constraint.
  #checkov:skip=CKV_AWS_109:Key policy: "*" is this key; the account delegates to IAM
  #checkov:skip=CKV_AWS_111:Key policy: "*" is this key; the account delegates to IAM
  #checkov:skip=CKV_AWS_356:Key policy: "*" is this key; the account delegates to IAM
  statement {
    sid       = "AccountIamGovernsUse"
    effect    = "Allow"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = [local.account_root]
    }
  }

  # A deleted or disabled key makes every archived object unreadable: as good as deleting it.
  statement {
    sid       = "DenyKeyDestruction"
    effect    = "Deny"
    actions   = ["kms:ScheduleKeyDeletion", "kms:DisableKey", "kms:DisableKeyRotation"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
    dynamic "condition" {
      for_each = local.break_glass
      content {
        test     = "ArnNotEquals"
        variable = "aws:PrincipalArn"
        values   = condition.value
      }
    }
  }
}

# ---------------------------------------------------------------- the archive bucket

resource "aws_s3_bucket" "archive" {
  #checkov:skip=CKV2_AWS_62:Event notifications are not needed; wormvault's sweeps verify every object
  bucket              = var.bucket_name
  object_lock_enabled = true
  force_destroy       = false
  tags                = var.tags
}

resource "aws_s3_bucket_versioning" "archive" {
  bucket = aws_s3_bucket.archive.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_object_lock_configuration" "archive" {
  bucket = aws_s3_bucket.archive.id
  rule {
    default_retention {
      mode = "COMPLIANCE"
      days = var.default_retention_days
    }
  }
  depends_on = [aws_s3_bucket_versioning.archive]
}

resource "aws_s3_bucket_server_side_encryption_configuration" "archive" {
  bucket = aws_s3_bucket.archive.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.archive.arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "archive" {
  bucket                  = aws_s3_bucket.archive.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "archive" {
  bucket = aws_s3_bucket.archive.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_logging" "archive" {
  bucket        = aws_s3_bucket.archive.id
  target_bucket = local.access_log_bucket
  target_prefix = "s3-access/${var.bucket_name}/"
}

# The only lifecycle rule: parts of abandoned multipart uploads are not records.
resource "aws_s3_bucket_lifecycle_configuration" "archive" {
  bucket = aws_s3_bucket.archive.id
  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
  depends_on = [aws_s3_bucket_versioning.archive]
}

data "aws_iam_policy_document" "archive" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.archive.arn, "${aws_s3_bucket.archive.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

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
    resources = [aws_s3_bucket.archive.arn, "${aws_s3_bucket.archive.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    dynamic "condition" {
      for_each = local.break_glass
      content {
        test     = "ArnNotEquals"
        variable = "aws:PrincipalArn"
        values   = condition.value
      }
    }
  }
}

resource "aws_s3_bucket_policy" "archive" {
  bucket = aws_s3_bucket.archive.id
  policy = data.aws_iam_policy_document.archive.json
  # The policy denies changing these, so they are set first.
  depends_on = [
    aws_s3_bucket_public_access_block.archive,
    aws_s3_bucket_versioning.archive,
    aws_s3_bucket_object_lock_configuration.archive,
    aws_s3_bucket_lifecycle_configuration.archive,
  ]
}

# ---------------------------------------------------------------- replication (optional)

resource "aws_iam_role" "replication" {
  count              = var.replicate_to == null ? 0 : 1
  name               = "wormvault-replication-${var.bucket_name}"
  assume_role_policy = data.aws_iam_policy_document.replication_trust.json
  tags               = var.tags
}

data "aws_iam_policy_document" "replication_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["s3.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "replication" {
  count = var.replicate_to == null ? 0 : 1
  statement {
    sid       = "ReadSourceConfiguration"
    actions   = ["s3:GetReplicationConfiguration", "s3:ListBucket"]
    resources = [aws_s3_bucket.archive.arn]
  }
  statement {
    sid = "ReadSourceVersions"
    actions = [
      "s3:GetObjectVersionForReplication",
      "s3:GetObjectVersionAcl",
      "s3:GetObjectVersionTagging",
      "s3:GetObjectRetention",
      "s3:GetObjectLegalHold",
    ]
    resources = ["${aws_s3_bucket.archive.arn}/*"]
  }
  # Objects and their tags only: deletes and delete markers are never replicated.
  statement {
    sid       = "WriteReplicas"
    actions   = ["s3:ReplicateObject", "s3:ReplicateTags"]
    resources = ["${var.replicate_to.bucket_arn}/*"]
  }
  statement {
    sid       = "DecryptSource"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.archive.arn]
  }
  statement {
    sid       = "EncryptReplica"
    actions   = ["kms:Encrypt", "kms:GenerateDataKey"]
    resources = [var.replicate_to.kms_key_arn]
  }
}

resource "aws_iam_role_policy" "replication" {
  count  = var.replicate_to == null ? 0 : 1
  name   = "replicate"
  role   = aws_iam_role.replication[0].id
  policy = data.aws_iam_policy_document.replication[0].json
}

resource "aws_s3_bucket_replication_configuration" "archive" {
  count  = var.replicate_to == null ? 0 : 1
  bucket = aws_s3_bucket.archive.id
  role   = aws_iam_role.replication[0].arn
  rule {
    id     = "replicate-everything"
    status = "Enabled"
    filter {}
    delete_marker_replication {
      status = "Disabled"
    }
    source_selection_criteria {
      sse_kms_encrypted_objects {
        status = "Enabled"
      }
    }
    destination {
      bucket        = var.replicate_to.bucket_arn
      storage_class = "STANDARD"
      encryption_configuration {
        replica_kms_key_id = var.replicate_to.kms_key_arn
      }
    }
  }
  depends_on = [aws_s3_bucket_versioning.archive]
}

# ---------------------------------------------------------------- access logs

resource "aws_s3_bucket" "access_logs" {
  #checkov:skip=CKV2_WORMVAULT_2:Access logs are not records; they expire, so they are not locked
  #checkov:skip=CKV_AWS_18:Logging the log bucket into itself would loop
  #checkov:skip=CKV_AWS_144:Access logs are not records and need no replica
  #checkov:skip=CKV_AWS_145:S3 server access logging delivers only to SSE-S3 buckets
  #checkov:skip=CKV2_AWS_62:Event notifications are not needed for access logs
  count         = var.access_log_bucket == null ? 1 : 0
  bucket        = "${var.bucket_name}-access-logs"
  force_destroy = false
  tags          = var.tags
}

resource "aws_s3_bucket_versioning" "access_logs" {
  count  = var.access_log_bucket == null ? 1 : 0
  bucket = aws_s3_bucket.access_logs[0].id
  versioning_configuration {
    status = "Enabled"
  }
}

# Server access logging delivers only to buckets encrypted with SSE-S3.
resource "aws_s3_bucket_server_side_encryption_configuration" "access_logs" {
  count  = var.access_log_bucket == null ? 1 : 0
  bucket = aws_s3_bucket.access_logs[0].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_public_access_block" "access_logs" {
  count                   = var.access_log_bucket == null ? 1 : 0
  bucket                  = aws_s3_bucket.access_logs[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "access_logs" {
  count  = var.access_log_bucket == null ? 1 : 0
  bucket = aws_s3_bucket.access_logs[0].id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "access_logs" {
  count  = var.access_log_bucket == null ? 1 : 0
  bucket = aws_s3_bucket.access_logs[0].id
  rule {
    id     = "expire-access-logs"
    status = "Enabled"
    filter {}
    expiration {
      days = var.access_log_expiration_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
  depends_on = [aws_s3_bucket_versioning.access_logs]
}

data "aws_iam_policy_document" "access_logs" {
  count = var.access_log_bucket == null ? 1 : 0
  statement {
    sid       = "S3ServerAccessLogDelivery"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.access_logs[0].arn}/s3-access/*"]
    principals {
      type        = "Service"
      identifiers = ["logging.s3.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = [aws_s3_bucket.archive.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [data.aws_caller_identity.current.account_id]
    }
  }
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.access_logs[0].arn, "${aws_s3_bucket.access_logs[0].arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "access_logs" {
  count      = var.access_log_bucket == null ? 1 : 0
  bucket     = aws_s3_bucket.access_logs[0].id
  policy     = data.aws_iam_policy_document.access_logs[0].json
  depends_on = [aws_s3_bucket_public_access_block.access_logs]
}
