//! Offline validation of `terraform/` (no Terraform binary or provider plugins needed).
//!
//! Two independent checks: every `.tf` file is parsed with a real HCL parser (hcl-rs) and the
//! modules and examples are held to the WORM essentials below; then checkov (python-hcl2's
//! parser, its built-in policies and the project's own in `terraform/policies/`) scans the
//! tree. Each check is also run on deliberately weakened copies, which must fail it, so a
//! check that silently stopped looking would be noticed. checkov exits 0 on parse errors and
//! its own Object Lock check misses `object_lock_enabled = true`; neither is relied on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use hcl::{Block, Body, Expression};

fn terraform_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("terraform")
}

/// The shortest 17a-4 retention class (SEC 17a-4(b), three years), in days: no bucket default
/// below it is acceptable.
const MIN_DEFAULT_DAYS: f64 = 1095.0;

// ------------------------------------------------------------------ the parsed configuration

/// Every top-level block of one Terraform directory (module or root).
struct Config {
    dir: PathBuf,
    blocks: Vec<Block>,
}

fn tf_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "tf"))
        .collect();
    files.sort();
    files
}

impl Config {
    fn load(dir: &Path) -> Result<Config, String> {
        let mut blocks = Vec::new();
        let files = tf_files(dir);
        if files.is_empty() {
            return Err(format!("{}: no .tf files", dir.display()));
        }
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let body: Body = hcl::parse(&text).map_err(|e| format!("{}: {e}", file.display()))?;
            blocks.extend(body.blocks().cloned());
        }
        Ok(Config {
            dir: dir.to_owned(),
            blocks,
        })
    }

    fn named(&self, kind: &str, ty: &str) -> impl Iterator<Item = (&str, &Body)> {
        self.blocks.iter().filter_map(move |b| {
            let labels = b.labels();
            (b.identifier() == kind && labels.len() == 2 && labels[0].as_str() == ty)
                .then(|| (labels[1].as_str(), b.body()))
        })
    }

    fn resources(&self, ty: &str) -> impl Iterator<Item = (&str, &Body)> {
        self.named("resource", ty)
    }

    fn resource(&self, ty: &str, name: &str) -> Option<&Body> {
        self.resources(ty).find(|(n, _)| *n == name).map(|(_, b)| b)
    }

    fn data(&self, ty: &str, name: &str) -> Option<&Body> {
        self.named("data", ty)
            .find(|(n, _)| *n == name)
            .map(|(_, b)| b)
    }

    /// Resources of a type whose `bucket` refers to `bucket_ref` (e.g. `aws_s3_bucket.archive`).
    fn attached<'a>(
        &'a self,
        ty: &'a str,
        bucket_ref: &'a str,
    ) -> impl Iterator<Item = &'a Body> + 'a {
        self.resources(ty)
            .filter(move |(_, b)| attr(b, "bucket").is_some_and(|e| refers(e, bucket_ref)))
            .map(|(_, b)| b)
    }

    fn variables(&self) -> BTreeMap<&str, Option<&Expression>> {
        self.blocks
            .iter()
            .filter(|b| b.identifier() == "variable" && b.labels().len() == 1)
            .map(|b| (b.labels()[0].as_str(), attr(b.body(), "default")))
            .collect()
    }

    fn locals(&self) -> BTreeMap<String, Expression> {
        self.blocks
            .iter()
            .filter(|b| b.identifier() == "locals")
            .flat_map(|b| b.body().attributes())
            .map(|a| (a.key().to_owned(), a.expr().clone()))
            .collect()
    }
}

fn attr<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

fn blocks<'a>(body: &'a Body, ident: &'a str) -> impl Iterator<Item = &'a Body> + 'a {
    body.blocks()
        .filter(move |b| b.identifier() == ident)
        .map(|b| b.body())
}

/// `body.a.b.c` through nested blocks (the first of each name).
fn path<'a>(body: &'a Body, keys: &[&'a str]) -> Option<&'a Expression> {
    let (last, inner) = keys.split_last()?;
    let mut b = body;
    for k in inner {
        b = blocks(b, k).next()?;
    }
    attr(b, last)
}

fn refers(e: &Expression, name: &str) -> bool {
    let text = e.to_string();
    text == name || text.starts_with(&format!("{name}.")) || text.contains(&format!("{name}["))
}

fn is_str(e: Option<&Expression>, want: &str) -> bool {
    matches!(e, Some(Expression::String(s)) if s == want)
}

fn is_true(e: Option<&Expression>) -> bool {
    matches!(e, Some(Expression::Bool(true)))
}

/// A number, directly or as the default of the variable it names.
fn number(e: Option<&Expression>, vars: &BTreeMap<&str, Option<&Expression>>) -> Option<f64> {
    match e? {
        Expression::Number(n) => n.as_f64(),
        other => {
            let text = other.to_string();
            let name = text.strip_prefix("var.")?;
            number(*vars.get(name)?, vars)
        }
    }
}

/// Every string an expression can produce, following `local.` references; each marked
/// whether it is only produced on one branch of a conditional.
fn strings(
    e: &Expression,
    locals: &BTreeMap<String, Expression>,
    conditional: bool,
    out: &mut Vec<(String, bool)>,
) {
    match e {
        Expression::String(s) => out.push((s.clone(), conditional)),
        Expression::Array(items) => {
            for i in items {
                strings(i, locals, conditional, out);
            }
        }
        Expression::FuncCall(f) => {
            for a in &f.args {
                strings(a, locals, conditional, out);
            }
        }
        Expression::Conditional(c) => {
            strings(&c.true_expr, locals, true, out);
            strings(&c.false_expr, locals, true, out);
        }
        Expression::Parenthesis(inner) => strings(inner, locals, conditional, out),
        Expression::Traversal(_) => {
            let text = e.to_string();
            if let Some(local) = text.strip_prefix("local.")
                && let Some(def) = locals.get(local)
            {
                strings(def, locals, conditional, out);
            }
        }
        _ => {}
    }
}

/// The policy statements of a policy document, static and `dynamic "statement"` ones.
fn statements(doc: &Body) -> Vec<&Body> {
    let mut out: Vec<&Body> = blocks(doc, "statement").collect();
    for d in doc.blocks().filter(|b| {
        b.identifier() == "dynamic"
            && b.labels()
                .first()
                .is_some_and(|l| l.as_str() == "statement")
    }) {
        out.extend(blocks(d.body(), "content"));
    }
    out
}

fn actions(statement: &Body, locals: &BTreeMap<String, Expression>) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    if let Some(e) = attr(statement, "actions") {
        strings(e, locals, false, &mut out);
    }
    out
}

fn is_deny(statement: &Body) -> bool {
    is_str(attr(statement, "effect"), "Deny")
}

/// Everyone: `principals { type = "*" identifiers = ["*"] }` (AWS) or `principal = "*"` (MinIO).
fn applies_to_everyone(statement: &Body) -> bool {
    is_str(attr(statement, "principal"), "*")
        || blocks(statement, "principals").any(|p| {
            is_str(attr(p, "type"), "*")
                && matches!(attr(p, "identifiers"), Some(Expression::Array(a)) if a.iter().any(|i| is_str(Some(i), "*")))
        })
}

/// The actions a WORM bucket's policy must deny to everyone.
const MUST_DENY: [&str; 4] = [
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:BypassGovernanceRetention",
    "s3:PutBucketObjectLockConfiguration",
];

/// Checks the bucket policy document `doc`: a statement denying [`MUST_DENY`] to everyone,
/// whose only exemption is the (empty by default) break-glass list.
fn check_deny_statement(
    cfg: &Config,
    doc: &Body,
    what: &str,
    problems: &mut Vec<String>,
) -> Option<()> {
    let locals = cfg.locals();
    let deny = statements(doc).into_iter().find(|s| {
        is_deny(s) && {
            let acts: BTreeSet<String> = actions(s, &locals).into_iter().map(|a| a.0).collect();
            MUST_DENY.iter().all(|a| acts.contains(*a))
        }
    });
    let Some(deny) = deny else {
        problems.push(format!(
            "{what}: no deny statement for {} (deletion, governance bypass and lock changes must be refused to everyone)",
            MUST_DENY.join(", ")
        ));
        return None;
    };
    if !applies_to_everyone(deny) {
        problems.push(format!(
            "{what}: the deny statement does not apply to everyone"
        ));
    }
    if blocks(deny, "condition").next().is_some() {
        problems.push(format!(
            "{what}: the deny statement has a fixed condition; only the break-glass exemption may narrow it"
        ));
    }
    Some(())
}

// ------------------------------------------------------------------ the module checks

/// A provider's names for what a WORM archive bucket is made of.
struct Provider {
    bucket: &'static str,
    /// The bucket's argument that enables Object Lock at creation.
    lock_argument: &'static str,
    versioning: &'static str,
    lock_configuration: &'static str,
    bucket_policy: &'static str,
    policy_document: &'static str,
    /// What an identity is called: a role, a service account.
    identity: &'static str,
}

const AWS_PROVIDER: Provider = Provider {
    bucket: "aws_s3_bucket",
    lock_argument: "object_lock_enabled",
    versioning: "aws_s3_bucket_versioning",
    lock_configuration: "aws_s3_bucket_object_lock_configuration",
    bucket_policy: "aws_s3_bucket_policy",
    policy_document: "aws_iam_policy_document",
    identity: "role",
};

const MINIO_PROVIDER: Provider = Provider {
    bucket: "minio_s3_bucket",
    lock_argument: "object_locking",
    versioning: "minio_s3_bucket_versioning",
    lock_configuration: "minio_s3_bucket_object_lock_configuration",
    bucket_policy: "minio_s3_bucket_policy",
    policy_document: "minio_iam_policy_document",
    identity: "service account",
};

/// What every provider's `archive` bucket must have: lock at creation, no force_destroy,
/// versioning, a COMPLIANCE default of at least three years, and a bucket policy with the
/// deny statement. Returns the bucket's reference and its policy document, for the
/// provider's own checks; `None` when there is no archive bucket at all.
fn check_archive_bucket<'a>(
    cfg: &'a Config,
    pv: &Provider,
    p: &mut Vec<String>,
) -> Option<(String, Option<&'a Body>)> {
    let bucket = format!("{}.archive", pv.bucket);
    let Some(b) = cfg.resource(pv.bucket, "archive") else {
        p.push(format!("no {bucket}"));
        return None;
    };
    if !is_true(attr(b, pv.lock_argument)) {
        p.push(format!(
            "the archive bucket is not created with {} = true",
            pv.lock_argument
        ));
    }
    if is_true(attr(b, "force_destroy")) {
        p.push("the archive bucket has force_destroy = true".into());
    }
    if !cfg
        .attached(pv.versioning, &bucket)
        .any(|v| is_str(path(v, &["versioning_configuration", "status"]), "Enabled"))
    {
        p.push("versioning is not Enabled on the archive bucket".into());
    }
    match cfg.attached(pv.lock_configuration, &bucket).next() {
        None => {
            p.push("no object lock configuration (default retention) for the archive bucket".into())
        }
        Some(lock) => {
            if !is_str(
                path(lock, &["rule", "default_retention", "mode"]),
                "COMPLIANCE",
            ) {
                p.push("the default retention mode is not COMPLIANCE".into());
            }
            check_default_days(
                path(lock, &["rule", "default_retention", "days"]),
                &cfg.variables(),
                p,
            );
        }
    }
    let doc = cfg
        .attached(pv.bucket_policy, &bucket)
        .next()
        .and_then(|pol| policy_doc(cfg, attr(pol, "policy"), pv.policy_document));
    match doc {
        None => p.push(format!(
            "no bucket policy (from a {}) on the archive bucket",
            pv.policy_document
        )),
        Some(doc) => {
            check_deny_statement(cfg, doc, "the archive bucket policy", p);
        }
    }
    Some((bucket, doc))
}

/// The `daemon` and `reader` identity policies: least privilege, and what the daemon uses.
fn check_identities(cfg: &Config, pv: &Provider, daemon_also_needs: &[&str]) -> Vec<String> {
    let mut p = Vec::new();
    for (name, read_only) in [("daemon", false), ("reader", true)] {
        let Some(doc) = cfg.data(pv.policy_document, name) else {
            p.push(format!("no {}.{name}", pv.policy_document));
            continue;
        };
        let who = format!("the {name} {}", pv.identity);
        let granted = check_identity_policy(cfg, doc, &who, read_only, &mut p);
        if name == "daemon" {
            require(&granted, &DAEMON_NEEDS, &who, &mut p);
            require(&granted, daemon_also_needs, &who, &mut p);
        }
    }
    p
}

fn check_aws_archive(cfg: &Config) -> Vec<String> {
    let mut p = Vec::new();
    let Some((bucket, policy)) = check_archive_bucket(cfg, &AWS_PROVIDER, &mut p) else {
        return p;
    };
    let bucket = bucket.as_str();
    match cfg
        .attached("aws_s3_bucket_server_side_encryption_configuration", bucket)
        .next()
    {
        None => p.push("no server-side encryption configuration for the archive bucket".into()),
        Some(sse) => {
            let by_default = &["rule", "apply_server_side_encryption_by_default"];
            let alg = path(sse, &[by_default[0], by_default[1], "sse_algorithm"]);
            let key = path(sse, &[by_default[0], by_default[1], "kms_master_key_id"]);
            if !is_str(alg, "aws:kms") || key.is_none() {
                p.push("the archive bucket is not encrypted with SSE-KMS under a named key".into());
            } else if let Some(k) = key.map(|k| k.to_string())
                && let Some(name) = k
                    .strip_prefix("aws_kms_key.")
                    .and_then(|r| r.split('.').next())
                && !cfg
                    .resource("aws_kms_key", name)
                    .is_some_and(|kb| is_true(attr(kb, "enable_key_rotation")))
            {
                p.push(format!("the KMS key aws_kms_key.{name} does not rotate"));
            }
        }
    }
    match cfg
        .attached("aws_s3_bucket_public_access_block", bucket)
        .next()
    {
        None => p.push("no public access block for the archive bucket".into()),
        Some(pab) => {
            for k in [
                "block_public_acls",
                "block_public_policy",
                "ignore_public_acls",
                "restrict_public_buckets",
            ] {
                if !is_true(attr(pab, k)) {
                    p.push(format!("public access block: {k} is not true"));
                }
            }
        }
    }
    if cfg
        .attached("aws_s3_bucket_logging", bucket)
        .next()
        .is_none()
    {
        p.push("no server access logging for the archive bucket".into());
    }
    for lc in cfg.attached("aws_s3_bucket_lifecycle_configuration", bucket) {
        for rule in blocks(lc, "rule") {
            for inner in rule.blocks() {
                let id = inner.identifier();
                if !matches!(id, "filter" | "abort_incomplete_multipart_upload") {
                    p.push(format!(
                        "a lifecycle rule on the archive bucket has {id}: only aborting incomplete multipart uploads is allowed"
                    ));
                }
            }
        }
    }
    for rep in cfg.attached("aws_s3_bucket_replication_configuration", bucket) {
        for rule in blocks(rep, "rule") {
            if !is_str(
                path(rule, &["delete_marker_replication", "status"]),
                "Disabled",
            ) {
                p.push("replication must not carry delete markers to the replica".into());
            }
        }
    }
    if let Some(doc) = policy {
        let tls = statements(doc).into_iter().any(|s| {
            is_deny(s)
                && applies_to_everyone(s)
                && blocks(s, "condition").any(|c| {
                    is_str(attr(c, "variable"), "aws:SecureTransport")
                        && attr(c, "values").is_some_and(|v| v.to_string().contains("false"))
                })
        });
        if !tls {
            p.push("the archive bucket policy does not deny requests without TLS".into());
        }
    }
    match cfg.variables().get("break_glass_principal_arns") {
        Some(Some(Expression::Array(a))) if a.is_empty() => {}
        _ => p.push("break_glass_principal_arns must exist and default to no one".into()),
    }
    p
}

fn check_default_days(
    days: Option<&Expression>,
    vars: &BTreeMap<&str, Option<&Expression>>,
    p: &mut Vec<String>,
) {
    match number(days, vars) {
        Some(d) if d >= MIN_DEFAULT_DAYS => {}
        Some(d) => p.push(format!(
            "the default retention is {d} days, below {MIN_DEFAULT_DAYS} (SEC 17a-4(b), the shortest class)"
        )),
        None => p.push("the default retention period is not a number of days".into()),
    }
}

/// The policy document a `policy = data.TYPE.NAME.json` attribute names.
fn policy_doc<'a>(cfg: &'a Config, policy: Option<&Expression>, ty: &str) -> Option<&'a Body> {
    let text = policy?.to_string();
    let name = text
        .strip_prefix(&format!("data.{ty}."))?
        .split(['.', '['])
        .next()?;
    cfg.data(ty, name)
}

/// Actions no identity of wormvault may hold, by prefix; and no wildcard at all (`s3:Put*`
/// would include `s3:PutBucketObjectLockConfiguration`).
const NEVER_GRANTED: [&str; 6] = [
    "s3:Delete",
    "s3:BypassGovernanceRetention",
    "s3:PutBucket",
    "s3:PutLifecycleConfiguration",
    "s3:PutReplicationConfiguration",
    "kms:ScheduleKeyDeletion",
];

fn forbidden(action: &str) -> Option<&'static str> {
    if action.contains('*') {
        return Some("a wildcard");
    }
    NEVER_GRANTED
        .iter()
        .copied()
        .find(|prefix| action.starts_with(prefix))
}

/// The Allow statements of an identity policy: nothing from [`NEVER_GRANTED`], no legal hold
/// unless behind a switch, and (for `read_only`) no writes. Returns the granted actions.
fn check_identity_policy(
    cfg: &Config,
    doc: &Body,
    what: &str,
    read_only: bool,
    p: &mut Vec<String>,
) -> BTreeSet<String> {
    let locals = cfg.locals();
    let mut granted = BTreeSet::new();
    for s in statements(doc) {
        if is_deny(s) {
            continue;
        }
        for (action, conditional) in actions(s, &locals) {
            if let Some(pat) = forbidden(&action) {
                p.push(format!("{what} grants {action} (matches {pat})"));
            }
            if action == "s3:PutObjectLegalHold" && !conditional {
                p.push(format!(
                    "{what} grants s3:PutObjectLegalHold unconditionally; only when legal holds are enabled"
                ));
            }
            if read_only
                && (action.starts_with("s3:Put")
                    || action.starts_with("s3:Replicate")
                    || action == "kms:GenerateDataKey"
                    || action == "kms:Encrypt")
            {
                p.push(format!("{what} is read-only but grants {action}"));
            }
            granted.insert(action);
        }
    }
    granted
}

fn require(granted: &BTreeSet<String>, needed: &[&str], what: &str, p: &mut Vec<String>) {
    for n in needed {
        if !granted.contains(*n) {
            p.push(format!("{what} lacks {n}, which the daemon uses"));
        }
    }
}

const DAEMON_NEEDS: [&str; 7] = [
    "s3:PutObject",
    "s3:PutObjectRetention",
    "s3:GetObject",
    "s3:ListBucket",
    "s3:ListBucketVersions",
    "s3:GetBucketVersioning",
    "s3:GetBucketObjectLockConfiguration",
];

fn check_aws_daemon_iam(cfg: &Config) -> Vec<String> {
    check_identities(cfg, &AWS_PROVIDER, &["kms:GenerateDataKey", "kms:Decrypt"])
}

fn check_minio_archive(cfg: &Config) -> Vec<String> {
    let mut p = Vec::new();
    let Some((bucket, _)) = check_archive_bucket(cfg, &MINIO_PROVIDER, &mut p) else {
        return p;
    };
    if !cfg
        .attached("minio_s3_bucket_server_side_encryption", &bucket)
        .any(|e| is_str(attr(e, "encryption_type"), "aws:kms"))
    {
        p.push("the archive bucket is not encrypted with SSE-KMS".into());
    }
    p.extend(check_identities(cfg, &MINIO_PROVIDER, &[]));
    p
}

/// The check for a module directory, by its name.
fn module_check(dir: &Path) -> Option<Check> {
    match dir.file_name()?.to_str()? {
        "aws-archive" => Some(check_aws_archive),
        "aws-daemon-iam" => Some(check_aws_daemon_iam),
        "minio-archive" => Some(check_minio_archive),
        _ => None,
    }
}

/// A root configuration: each `module` call names an existing module, passes only variables
/// it declares and all it requires, keeps the retention floor, and the module passes its check.
fn check_example(cfg: &Config) -> Vec<String> {
    let mut p = Vec::new();
    let vars = cfg.variables();
    let calls: Vec<_> = cfg
        .blocks
        .iter()
        .filter(|b| b.identifier() == "module")
        .collect();
    if calls.is_empty() {
        p.push("no module calls".into());
    }
    for call in calls {
        let name = call.labels().first().map(|l| l.as_str()).unwrap_or("?");
        let Some(Expression::String(source)) = attr(call.body(), "source") else {
            p.push(format!("module.{name}: no literal source"));
            continue;
        };
        let dir = cfg.dir.join(source);
        let module = match Config::load(&dir) {
            Ok(m) => m,
            Err(e) => {
                p.push(format!("module.{name}: {e}"));
                continue;
            }
        };
        let declared = module.variables();
        let meta = [
            "source",
            "providers",
            "count",
            "for_each",
            "depends_on",
            "version",
        ];
        let passed: BTreeSet<&str> = call
            .body()
            .attributes()
            .map(|a| a.key())
            .filter(|k| !meta.contains(k))
            .collect();
        for k in &passed {
            if !declared.contains_key(k) {
                p.push(format!("module.{name}: {k} is not a variable of {source}"));
            }
        }
        for (k, default) in &declared {
            if default.is_none() && !passed.contains(k) {
                p.push(format!(
                    "module.{name}: the required variable {k} is not set"
                ));
            }
        }
        if passed.contains("default_retention_days") {
            let mut q = Vec::new();
            check_default_days(attr(call.body(), "default_retention_days"), &vars, &mut q);
            p.extend(q.into_iter().map(|s| format!("module.{name}: {s}")));
        }
        if let Some(check) = module_check(&dir) {
            p.extend(
                check(&module)
                    .into_iter()
                    .map(|s| format!("module.{name} ({source}): {s}")),
            );
        }
    }
    p
}

/// Every module and example, with its check.
/// A configuration's check: its problems, as sentences.
type Check = fn(&Config) -> Vec<String>;

fn targets() -> Vec<(&'static str, Check)> {
    vec![
        ("modules/aws-archive", check_aws_archive),
        ("modules/aws-daemon-iam", check_aws_daemon_iam),
        ("modules/minio-archive", check_minio_archive),
        ("examples/aws", check_example),
        ("examples/minio", check_example),
    ]
}

fn run_check(root: &Path, target: &str) -> Vec<String> {
    let check = targets()
        .into_iter()
        .find(|(t, _)| *t == target)
        .unwrap_or_else(|| panic!("no target {target}"))
        .1;
    match Config::load(&root.join(target)) {
        Ok(cfg) => check(&cfg),
        Err(e) => vec![format!("parse error: {e}")],
    }
}

// ------------------------------------------------------------------ weakened copies

enum Change {
    Replace(&'static str, &'static str),
    /// Remove the block that starts with this text, up to its matching `}`.
    RemoveBlock(&'static str),
}

struct Weakening {
    name: &'static str,
    file: &'static str,
    change: Change,
    /// The configuration that must now fail, and a word its HCL check must say.
    target: &'static str,
    says: &'static str,
    /// The checkov check that must now fail, where checkov can see the property.
    checkov: Option<&'static str>,
}

const ARCHIVE: &str = "modules/aws-archive/main.tf";
const IAM: &str = "modules/aws-daemon-iam/main.tf";
const MINIO: &str = "modules/minio-archive/main.tf";
const DENY_STATEMENT: &str = "statement {\n    sid    = \"DenyDeletionAndLockChanges\"";

fn weakenings() -> Vec<Weakening> {
    use Change::*;
    let w = |name, file, change, target, says, checkov| Weakening {
        name,
        file,
        change,
        target,
        says,
        checkov,
    };
    vec![
        w(
            "aws-governance",
            ARCHIVE,
            Replace("mode = \"COMPLIANCE\"", "mode = \"GOVERNANCE\""),
            "modules/aws-archive",
            "not COMPLIANCE",
            Some("CKV2_WORMVAULT_1"),
        ),
        w(
            "aws-versioning-off",
            ARCHIVE,
            Replace(
                "bucket = aws_s3_bucket.archive.id\n  versioning_configuration {\n    status = \"Enabled\"",
                "bucket = aws_s3_bucket.archive.id\n  versioning_configuration {\n    status = \"Suspended\"",
            ),
            "modules/aws-archive",
            "versioning",
            Some("CKV2_WORMVAULT_7"),
        ),
        w(
            "aws-no-deny",
            ARCHIVE,
            RemoveBlock(DENY_STATEMENT),
            "modules/aws-archive",
            "no deny statement",
            None,
        ),
        w(
            "aws-no-encryption",
            ARCHIVE,
            RemoveBlock(
                "resource \"aws_s3_bucket_server_side_encryption_configuration\" \"archive\"",
            ),
            "modules/aws-archive",
            "encryption",
            Some("CKV_AWS_145"),
        ),
        w(
            "aws-no-lock",
            ARCHIVE,
            Replace("object_lock_enabled = true", "object_lock_enabled = false"),
            "modules/aws-archive",
            "object_lock_enabled",
            Some("CKV2_WORMVAULT_2"),
        ),
        w(
            "aws-expiring",
            ARCHIVE,
            Replace(
                "id     = \"abort-incomplete-multipart-uploads\"",
                "id     = \"abort-incomplete-multipart-uploads\"\n    expiration {\n      days = 30\n    }",
            ),
            "modules/aws-archive",
            "lifecycle",
            None,
        ),
        w(
            "aws-short-default",
            "modules/aws-archive/variables.tf",
            Replace(
                "default     = 2192 # six years",
                "default     = 30 # a month",
            ),
            "modules/aws-archive",
            "below",
            None,
        ),
        w(
            "iam-daemon-deletes",
            IAM,
            Replace(
                "[\"s3:PutObject\", \"s3:PutObjectRetention\"],\n",
                "[\"s3:PutObject\", \"s3:PutObjectRetention\", \"s3:DeleteObjectVersion\"],\n",
            ),
            "modules/aws-daemon-iam",
            "s3:DeleteObjectVersion",
            None,
        ),
        w(
            "iam-reader-writes",
            IAM,
            Replace(
                "sid       = \"ReadObjects\"\n    actions   = local.read_object_actions",
                "sid       = \"ReadObjects\"\n    actions   = concat([\"s3:PutObject\"], local.read_object_actions)",
            ),
            "modules/aws-daemon-iam",
            "read-only",
            None,
        ),
        w(
            "iam-legal-hold-always",
            IAM,
            Replace(
                "var.legal_hold ? [\"s3:PutObjectLegalHold\"] : [],",
                "[\"s3:PutObjectLegalHold\"],",
            ),
            "modules/aws-daemon-iam",
            "unconditionally",
            None,
        ),
        w(
            "minio-governance",
            MINIO,
            Replace("mode = \"COMPLIANCE\"", "mode = \"GOVERNANCE\""),
            "modules/minio-archive",
            "not COMPLIANCE",
            Some("CKV2_WORMVAULT_4"),
        ),
        w(
            "minio-versioning-off",
            MINIO,
            Replace("status = \"Enabled\"", "status = \"Suspended\""),
            "modules/minio-archive",
            "versioning",
            Some("CKV2_WORMVAULT_5"),
        ),
        w(
            "minio-no-deny",
            MINIO,
            RemoveBlock(DENY_STATEMENT),
            "modules/minio-archive",
            "no deny statement",
            None,
        ),
        w(
            "minio-no-encryption",
            MINIO,
            RemoveBlock("resource \"minio_s3_bucket_server_side_encryption\" \"archive\""),
            "modules/minio-archive",
            "encrypted",
            Some("CKV2_WORMVAULT_6"),
        ),
        w(
            "minio-no-locking",
            MINIO,
            Replace("object_locking = true", "object_locking = false"),
            "modules/minio-archive",
            "object_locking",
            Some("CKV2_WORMVAULT_3"),
        ),
        w(
            "minio-daemon-deletes",
            MINIO,
            Replace(
                "concat([\"s3:PutObject\", \"s3:PutObjectRetention\"], local.read_object_actions)",
                "concat([\"s3:PutObject\", \"s3:PutObjectRetention\", \"s3:DeleteObject\"], local.read_object_actions)",
            ),
            "modules/minio-archive",
            "s3:DeleteObject",
            None,
        ),
        w(
            "example-aws-short-retention",
            "examples/aws/variables.tf",
            Replace("default     = 2192", "default     = 30"),
            "examples/aws",
            "below",
            None,
        ),
        w(
            "example-aws-weak-module",
            ARCHIVE,
            Replace("mode = \"COMPLIANCE\"", "mode = \"GOVERNANCE\""),
            "examples/aws",
            "not COMPLIANCE",
            None,
        ),
        w(
            "example-aws-no-deny",
            ARCHIVE,
            RemoveBlock(DENY_STATEMENT),
            "examples/aws",
            "no deny statement",
            None,
        ),
        w(
            "example-minio-short-retention",
            "examples/minio/variables.tf",
            Replace("default     = 2192", "default     = 30"),
            "examples/minio",
            "below",
            None,
        ),
        w(
            "example-minio-typo",
            "examples/minio/main.tf",
            Replace(
                "create_kms_key         = var.create_kms_key",
                "create_kms_key         = var.create_kms_key\n  retention_days         = 30",
            ),
            "examples/minio",
            "not a variable",
            None,
        ),
        w(
            "example-minio-no-encryption",
            MINIO,
            RemoveBlock("resource \"minio_s3_bucket_server_side_encryption\" \"archive\""),
            "examples/minio",
            "encrypted",
            None,
        ),
    ]
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

fn remove_block(text: &str, start: &str) -> String {
    let begin = text.find(start).unwrap();
    let open = begin + text[begin..].find('{').unwrap();
    let mut depth = 0;
    for (i, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return format!("{}{}", &text[..begin], &text[open + i + 1..]);
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced block {start}");
}

/// A copy of `terraform/` at `dir` with one weakening applied.
fn weakened_copy(w: &Weakening, dir: &Path) {
    copy_tree(&terraform_dir(), dir);
    let file = dir.join(w.file);
    let text = std::fs::read_to_string(&file).unwrap();
    let changed = match w.change {
        Change::Replace(old, new) => {
            assert_eq!(
                text.matches(old).count(),
                1,
                "{}: {old:?} is not unique in {}",
                w.name,
                w.file
            );
            text.replace(old, new)
        }
        Change::RemoveBlock(start) => {
            assert_eq!(
                text.matches(start).count(),
                1,
                "{}: {start:?} is not unique in {}",
                w.name,
                w.file
            );
            remove_block(&text, start)
        }
    };
    assert_ne!(text, changed);
    std::fs::write(file, changed).unwrap();
}

// ------------------------------------------------------------------ tests

#[test]
fn every_terraform_file_parses() {
    let mut stack = vec![terraform_dir()];
    let mut count = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "tf") {
                let text = std::fs::read_to_string(&path).unwrap();
                let body: Body =
                    hcl::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(
                    body.blocks().next().is_some(),
                    "{}: no blocks",
                    path.display()
                );
                count += 1;
            }
        }
    }
    // 3 modules x 4 files, 2 examples x 3 files.
    assert!(count >= 18, "only {count} .tf files");
}

#[test]
fn modules_and_examples_have_the_worm_essentials() {
    let root = terraform_dir();
    for (target, _) in targets() {
        let problems = run_check(&root, target);
        assert!(
            problems.is_empty(),
            "{target}:\n  {}",
            problems.join("\n  ")
        );
    }
}

#[test]
fn weakened_copies_fail_the_hcl_checks() {
    let tmp = tempfile::tempdir().unwrap();
    for w in weakenings() {
        let dir = tmp.path().join(w.name);
        weakened_copy(&w, &dir);
        let problems = run_check(&dir, w.target);
        assert!(
            problems.iter().any(|p| p.contains(w.says)),
            "{}: {} should fail with {:?}, got {problems:?}",
            w.name,
            w.target,
            w.says
        );
        // The untouched configurations still pass: the failure is the weakening's.
        if w.target.starts_with("modules/") {
            for (other, _) in targets()
                .iter()
                .filter(|(t, _)| t.starts_with("modules/") && !w.file.starts_with(t))
            {
                assert!(
                    run_check(&dir, other).is_empty(),
                    "{}: {other} fails too",
                    w.name
                );
            }
        }
    }
}

#[test]
fn a_file_that_does_not_parse_fails() {
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(&terraform_dir(), tmp.path());
    let file = tmp.path().join(ARCHIVE);
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &file,
        text.replacen(
            "resource \"aws_s3_bucket\" \"archive\" {",
            "resource \"aws_s3_bucket\" \"archive\" {{",
            1,
        ),
    )
    .unwrap();
    let problems = run_check(tmp.path(), "modules/aws-archive");
    assert!(
        problems.iter().any(|p| p.contains("parse error")),
        "{problems:?}"
    );
}

// ------------------------------------------------------------------ checkov

struct CheckovRun {
    /// (check id, file path as checkov prints it, resource)
    failed: Vec<(String, String, String)>,
    passed: Vec<(String, String)>,
    parsing_errors: Vec<String>,
}

fn checkov(dir: &Path) -> CheckovRun {
    let bin = std::env::var("WORMVAULT_TEST_CHECKOV").expect(
        "WORMVAULT_TEST_CHECKOV is not set: the Terraform policies need checkov; run the suite with scripts/test",
    );
    let out = std::process::Command::new(bin)
        .arg("--directory")
        .arg(dir)
        .arg("--external-checks-dir")
        .arg(terraform_dir().join("policies"))
        .args([
            "--framework",
            "terraform",
            "--skip-download",
            "--compact",
            "--output",
            "json",
        ])
        .env("BC_SKIP_MAPPING", "TRUE")
        .output()
        .expect("run checkov");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "checkov printed no JSON ({e}); exit {:?}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let reports = match json {
        serde_json::Value::Array(a) => a,
        one => vec![one],
    };
    let mut run = CheckovRun {
        failed: vec![],
        passed: vec![],
        parsing_errors: vec![],
    };
    for r in reports {
        let s = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
        for f in r["results"]["failed_checks"]
            .as_array()
            .into_iter()
            .flatten()
        {
            run.failed
                .push((s(f, "check_id"), s(f, "file_path"), s(f, "resource")));
        }
        for f in r["results"]["passed_checks"]
            .as_array()
            .into_iter()
            .flatten()
        {
            run.passed.push((s(f, "check_id"), s(f, "file_path")));
        }
        for e in r["results"]["parsing_errors"]
            .as_array()
            .into_iter()
            .flatten()
        {
            run.parsing_errors
                .push(e.as_str().unwrap_or_default().to_owned());
        }
    }
    run
}

#[test]
fn checkov_passes_the_modules_and_fails_weakened_copies() {
    let tmp = tempfile::tempdir().unwrap();
    copy_tree(&terraform_dir(), &tmp.path().join("original"));
    let seen: Vec<Weakening> = weakenings()
        .into_iter()
        .filter(|w| w.checkov.is_some())
        .collect();
    for w in &seen {
        weakened_copy(w, &tmp.path().join(w.name));
    }
    // A file checkov cannot parse: it must show up as a parsing error, not as a pass.
    copy_tree(&terraform_dir(), &tmp.path().join("broken"));
    let broken = tmp.path().join("broken").join(MINIO);
    let text = std::fs::read_to_string(&broken).unwrap();
    std::fs::write(
        &broken,
        text.replacen(
            "resource \"minio_s3_bucket\" \"archive\" {",
            "resource \"minio_s3_bucket\" \"archive\" {{",
            1,
        ),
    )
    .unwrap();

    let run = checkov(tmp.path());
    let under =
        |dir: &str, path: &str| path.trim_start_matches('/').starts_with(&format!("{dir}/"));

    let original: Vec<_> = run
        .failed
        .iter()
        .filter(|f| under("original", &f.1))
        .collect();
    assert!(
        original.is_empty(),
        "checkov fails the shipped configuration: {original:#?}"
    );
    assert!(
        !run.parsing_errors.iter().any(|e| e.contains("/original/")),
        "checkov could not parse: {:?}",
        run.parsing_errors
    );
    for id in 1..=7 {
        let id = format!("CKV2_WORMVAULT_{id}");
        assert!(
            run.passed
                .iter()
                .any(|p| p.0 == id && under("original", &p.1)),
            "the custom policy {id} never ran on the shipped configuration"
        );
    }
    assert!(
        run.parsing_errors.iter().any(|e| e.contains("/broken/")),
        "a file that does not parse was not reported: {:?}",
        run.parsing_errors
    );
    for w in &seen {
        let id = w.checkov.unwrap();
        assert!(
            run.failed.iter().any(|f| f.0 == id && under(w.name, &f.1)),
            "{}: checkov did not fail {id}; failures there: {:?}",
            w.name,
            run.failed
                .iter()
                .filter(|f| under(w.name, &f.1))
                .collect::<Vec<_>>()
        );
    }
}
