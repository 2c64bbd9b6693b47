//! The stand-in cluster behind [`super::ApiServer`]: the objects of every kind the audit reads,
//! kept as kube-apiserver's storage keeps them (keys in order, one global resourceVersion
//! counter), listed as the real server lists them (typed `<Kind>List` documents whose items carry
//! no kind/apiVersion, pages cut by `limit` with the real continue token, `{"v","rv","start"}` in
//! unpadded base64url, and `remainingItemCount`; label selectors; `410 Expired` for tokens older
//! than a compaction), and written with the real rules (optimistic concurrency, merge patches).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::apiserver::WEBHOOK_USER;

/// One kind the stand-in serves (all at version v1).
pub(super) struct Kind {
    pub group: &'static str,
    /// The plural of the REST path.
    pub resource: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    /// What RBAC lets the client do besides get and list: the audit's ClusterRole of issue 20
    /// (create and patch Events; create and update its Lease). Any other write is 403.
    pub writes: &'static [&'static str],
    /// The registry strategy's AllowUnconditionalUpdate: may a PUT omit resourceVersion?
    pub unconditional_update: bool,
}

const fn k(group: &'static str, resource: &'static str, kind: &'static str, ns: bool) -> Kind {
    Kind {
        group,
        resource,
        kind,
        namespaced: ns,
        writes: &[],
        unconditional_update: true,
    }
}

static KINDS: &[Kind] = &[
    k("", "pods", "Pod", true),
    k("", "replicationcontrollers", "ReplicationController", true),
    k("", "nodes", "Node", false),
    k("", "namespaces", "Namespace", false),
    k("", "serviceaccounts", "ServiceAccount", true),
    k("", "secrets", "Secret", true),
    Kind {
        writes: &["create", "patch"],
        ..k("", "events", "Event", true)
    },
    k("apps", "deployments", "Deployment", true),
    k("apps", "statefulsets", "StatefulSet", true),
    k("apps", "daemonsets", "DaemonSet", true),
    k("apps", "replicasets", "ReplicaSet", true),
    k("batch", "jobs", "Job", true),
    k("batch", "cronjobs", "CronJob", true),
    Kind {
        writes: &["create", "update"],
        unconditional_update: false,
        ..k("coordination.k8s.io", "leases", "Lease", true)
    },
];

pub(super) fn kind_of(resource: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.resource == resource)
}

impl Kind {
    pub fn api_version(&self) -> String {
        match self.group {
            "" => "v1".to_owned(),
            group => format!("{group}/v1"),
        }
    }

    /// `leases.coordination.k8s.io`, or `pods` in the core group: how messages name it.
    pub fn qualified(&self) -> String {
        match self.group {
            "" => self.resource.to_owned(),
            group => format!("{}.{group}", self.resource),
        }
    }

    /// A Status's `details` for this resource (and object).
    pub fn details(&self, name: Option<&str>) -> Value {
        let details = [
            ("kind", Some(self.resource)),
            ("name", name),
            ("group", Some(self.group)),
        ];
        let present = details
            .into_iter()
            .filter_map(|(k, v)| Some((k.into(), v?.into())));
        Value::Object(present.filter(|(_, v)| v != "").collect())
    }
}

/// An error as kube-apiserver answers it: the HTTP status and its `meta/v1` Status body.
pub(super) struct Failure(pub u16, pub Value);

const INCONSISTENT_CONTINUE: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

impl Failure {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> Failure {
        let (status, message) = ("Failure", message.into());
        let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": status,
            "message": message, "reason": reason, "code": code});
        Failure(code, body)
    }

    pub fn about(mut self, kind: &Kind, name: Option<&str>) -> Failure {
        self.1["details"] = kind.details(name);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(400, "BadRequest", message)
    }

    pub fn not_found(kind: &Kind, name: &str) -> Failure {
        let message = format!("{} \"{name}\" not found", kind.qualified());
        Failure::new(404, "NotFound", message).about(kind, Some(name))
    }

    fn conflict(kind: &Kind, name: &str) -> Failure {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            kind.qualified()
        );
        Failure::new(409, "Conflict", message).about(kind, Some(name))
    }

    /// 422, as a field validation reports it; `label` is the kind as the validation names it.
    fn invalid(kind: &Kind, label: &str, name: &str, field: &str, cause: &str) -> Failure {
        let dot = if kind.group.is_empty() { "" } else { "." };
        let message = format!(
            "{label}{dot}{} \"{name}\" is invalid: {field}: {cause}",
            kind.group
        );
        let mut failure = Failure::new(422, "Invalid", message).about(kind, Some(name));
        let reason = ["FieldValueInvalid", "FieldValueRequired"][cause.starts_with("Req") as usize];
        failure.1["details"]["kind"] = label.into();
        let cause = json!({"reason": reason, "message": cause, "field": field});
        failure.1["details"]["causes"] = json!([cause]);
        failure
    }

    /// What RBAC answers: `verb` on `kind` (and object `name`) in `namespace` or cluster-wide.
    pub fn forbidden(kind: &Kind, verb: &str, ns: Option<&str>, name: Option<&str>) -> Failure {
        let what = match name {
            Some(name) => format!("{} \"{name}\"", kind.qualified()),
            None => kind.qualified(),
        };
        let scope = match ns {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_owned(),
        };
        let (user, resource, group) = (WEBHOOK_USER, kind.resource, kind.group);
        let message = format!(
            "{what} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" {scope}"
        );
        Failure::new(403, "Forbidden", message).about(kind, name)
    }
}

/// What the server gives each object, never the client.
const IDENTITY: [&str; 4] = [
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "managedFields",
];

fn uid(revision: u64) -> String {
    format!("6f1c2a7e-0000-4000-8000-{revision:012}")
}

/// (resource, namespace, name); namespace "" for cluster-scoped objects.
pub(super) type Key = (String, String, String);

pub(super) fn key(kind: &Kind, namespace: &str, name: &str) -> Key {
    (kind.resource.into(), namespace.into(), name.into())
}

#[derive(Default)]
pub(super) struct Store {
    pub objects: BTreeMap<Key, Value>,
    /// How many resourceVersions were handed out (from 1000 on).
    handed: u64,
    /// Continue tokens of a revision below this one are too old.
    compacted: u64,
}

/// The outcome of a write: 200 or 201 and the object, or the error.
pub(super) type Written = Result<(u16, Value), Failure>;

/// The identity of a new object at `time`, written by `manager`.
pub(super) fn fresh(kind: &Kind, time: &str, manager: &str) -> Value {
    let fields = json!({"manager": manager, "operation": "Update", "apiVersion": kind.api_version(),
        "time": time, "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}});
    json!({"creationTimestamp": time, "managedFields": [fields]})
}

/// The parameters of one list call.
#[derive(Default)]
pub(super) struct ListQuery {
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub selector: Option<Selector>,
    pub resource_version: Option<String>,
    pub watch: bool,
}

impl ListQuery {
    pub fn parse(query: Option<&str>) -> Result<ListQuery, Failure> {
        let mut list = ListQuery::default();
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*key {
                "limit" => list.limit = value.parse().ok().filter(|&n: &usize| n > 0),
                "continue" if !value.is_empty() => list.continue_token = Some(value.into()),
                "labelSelector" if !value.is_empty() => {
                    list.selector = Some(Selector::parse(&value)?)
                }
                "resourceVersion" => list.resource_version = Some(value.into()),
                "watch" => list.watch = value == "true" || value == "1",
                _ => {}
            }
        }
        Ok(list)
    }
}

impl Store {
    pub fn revision(&self) -> u64 {
        999 + self.handed
    }

    pub fn next_revision(&mut self) -> u64 {
        self.handed += 1;
        self.revision()
    }

    /// As an etcd compaction: every continue token handed out so far is too old from now on.
    pub fn compact(&mut self) {
        self.compacted = self.next_revision();
    }

    /// Stores `object` as `ns/name` with kind, apiVersion and a new resourceVersion; uid,
    /// creationTimestamp and managedFields as given, else as stored before, else from `fresh`.
    pub fn store(
        &mut self,
        kind: &Kind,
        ns: &str,
        name: &str,
        mut obj: Value,
        fresh: Value,
    ) -> Value {
        let revision = self.next_revision();
        let key = key(kind, ns, name);
        let mut old = self
            .objects
            .get(&key)
            .map_or(fresh, |o| o["metadata"].clone());
        old["uid"] = old["uid"]
            .take()
            .as_str()
            .map_or(uid(revision), str::to_owned)
            .into();
        obj["kind"] = kind.kind.into();
        obj["apiVersion"] = kind.api_version().into();
        let meta = &mut obj["metadata"];
        meta["name"] = name.into();
        if kind.namespaced {
            meta["namespace"] = ns.into();
        }
        for field in ["uid", "creationTimestamp", "managedFields"] {
            if meta[field].is_null() {
                meta[field] = old[field].take();
            }
        }
        meta["resourceVersion"] = revision.to_string().into();
        self.objects.insert(key, obj.clone());
        obj
    }

    /// POST: a new object; 409 AlreadyExists when there is one.
    pub fn create(&mut self, kind: &Kind, ns: &str, mut obj: Value, by: &str) -> Written {
        let name = obj["metadata"]["name"].as_str().unwrap_or("").to_owned();
        if name.is_empty() {
            let cause = "Required value: name or generateName is required";
            return Err(Failure::invalid(
                kind,
                kind.kind,
                "",
                "metadata.name",
                cause,
            ));
        }
        check(kind, ns, &name, &obj)?;
        if self.objects.contains_key(&key(kind, ns, &name)) {
            let message = format!("{} \"{name}\" already exists", kind.qualified());
            return Err(Failure::new(409, "AlreadyExists", message).about(kind, Some(&name)));
        }
        if let Some(meta) = obj["metadata"].as_object_mut() {
            meta.retain(|field, _| !IDENTITY.contains(&field.as_str()));
        }
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        Ok((201, self.store(kind, ns, &name, obj, fresh(kind, &now, by))))
    }

    /// PUT: optimistic concurrency on metadata.resourceVersion; a missing object is created
    /// (Leases and Events allow it).
    pub fn update(&mut self, kind: &Kind, ns: &str, name: &str, obj: Value, by: &str) -> Written {
        let given = obj["metadata"]["name"].as_str().unwrap_or("");
        if given != name {
            let message = format!(
                "the name of the object ({given}) does not match the name on the URL ({name})"
            );
            return Err(Failure::bad_request(message));
        }
        let Some(stored) = self.objects.get(&key(kind, ns, name)).cloned() else {
            return self.create(kind, ns, obj, by);
        };
        check(kind, ns, name, &obj)?;
        self.replace(kind, stored, obj, !kind.unconditional_update)
    }

    /// PATCH with a JSON merge patch (strategic merge patches are applied as one too).
    pub fn patch(&mut self, kind: &Kind, ns: &str, name: &str, patch: &Value) -> Written {
        let Some(stored) = self.objects.get(&key(kind, ns, name)).cloned() else {
            return Err(Failure::not_found(kind, name));
        };
        let mut obj = stored.clone();
        merge_patch(&mut obj, patch);
        self.replace(kind, stored, obj, false)
    }

    /// Writes `obj` over `stored`: a resourceVersion it gives (required when `strict`) must be
    /// the stored one; identity is kept; a no-op writes nothing (as etcd3's GuaranteedUpdate).
    fn replace(&mut self, kind: &Kind, stored: Value, mut obj: Value, strict: bool) -> Written {
        let meta = stored["metadata"].clone();
        let ns = meta["namespace"].as_str().unwrap_or("");
        let name = meta["name"].as_str().unwrap_or("");
        let given = obj["metadata"]["resourceVersion"].as_str().unwrap_or("");
        if given.is_empty() && strict {
            let (field, cause) = (
                "metadata.resourceVersion",
                "Invalid value: 0x0: must be specified for an update",
            );
            return Err(Failure::invalid(kind, kind.resource, name, field, cause));
        }
        if !given.is_empty() && given != meta["resourceVersion"] {
            return Err(Failure::conflict(kind, name));
        }
        obj["kind"] = kind.kind.into();
        obj["apiVersion"] = kind.api_version().into();
        let identity = ["name", "namespace"].iter().chain(&IDENTITY);
        for field in identity.filter(|f| meta.get(f).is_some()) {
            obj["metadata"][field] = meta[field].clone();
        }
        if obj == stored {
            return Ok((200, stored));
        }
        Ok((200, self.store(kind, ns, name, obj, Value::Null)))
    }

    /// One page of `kind` in `namespace` (or everywhere), and how many items it holds.
    pub fn list(
        &self,
        kind: &Kind,
        namespace: Option<&str>,
        query: &ListQuery,
    ) -> Result<(Value, usize), Failure> {
        let mut revision = self.revision();
        let mut lower = Bound::Included(key(kind, namespace.unwrap_or(""), ""));
        if let Some(token) = &query.continue_token {
            if query
                .resource_version
                .as_deref()
                .is_some_and(|v| !v.is_empty() && v != "0")
            {
                let message = "specifying resource version is not allowed when using continue";
                return Err(Failure::bad_request(message));
            }
            let (start, token_revision) = decode_continue(token)?;
            if token_revision > 0 && (token_revision as u64) < self.compacted {
                let mut expired = Failure::new(410, "Expired", INCONSISTENT_CONTINUE);
                expired.1["metadata"]["continue"] = encode_continue(&start, -1).into();
                return Err(expired);
            }
            if token_revision > 0 {
                revision = token_revision as u64;
            }
            lower = start_bound(kind, namespace, &start)?;
        }
        let mut rest = (self.objects.range((lower, Bound::Unbounded)))
            .take_while(|(k, _)| k.0 == kind.resource && namespace.is_none_or(|ns| k.1 == ns));
        let (mut items, mut last, mut remaining) = (Vec::new(), None, 0);
        while let Some((key, object)) = rest.next() {
            if query.limit.is_some_and(|limit| items.len() >= limit) {
                remaining = 1 + rest.count();
                break;
            }
            last = Some(key);
            if query.selector.as_ref().is_none_or(|s| s.matches(object)) {
                let mut item = object.clone();
                let fields = item.as_object_mut().expect("an object");
                fields.remove("kind");
                fields.remove("apiVersion");
                items.push(item);
            }
        }
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if let (Some((_, ns, name)), true) = (last, remaining > 0) {
            let start = match namespace.is_none() && kind.namespaced {
                true => format!("{ns}/{name}\0"),
                false => format!("{name}\0"),
            };
            metadata["continue"] = encode_continue(&start, revision as i64).into();
            // As the real server: no count when a selector would make it a guess.
            if query.selector.is_none() {
                metadata["remainingItemCount"] = remaining.into();
            }
        }
        let count = items.len();
        let list = json!({"kind": format!("{}List", kind.kind), "apiVersion": kind.api_version(),
            "metadata": metadata, "items": items});
        Ok((list, count))
    }
}

/// Checks a written body against its URL and the kind's validation.
fn check(kind: &Kind, ns: &str, name: &str, body: &Value) -> Result<(), Failure> {
    let given = body["metadata"]["namespace"].as_str().unwrap_or(ns);
    if given != ns && !given.is_empty() {
        let message =
            "the namespace of the provided object does not match the namespace sent on the request";
        return Err(Failure::bad_request(message));
    }
    let involved = body["involvedObject"]["namespace"].as_str().unwrap_or("");
    if kind.resource == "events" && !involved.is_empty() && involved != ns {
        let cause = format!("Invalid value: \"{involved}\": does not match event.namespace");
        let field = "involvedObject.namespace";
        return Err(Failure::invalid(kind, "Event", name, field, &cause));
    }
    Ok(())
}

fn encode_continue(start: &str, revision: i64) -> String {
    let token = json!({"v": "meta.k8s.io/v1", "rv": revision, "start": start});
    URL_SAFE_NO_PAD.encode(token.to_string())
}

/// The start key and revision of a continue token, checked as the real server checks them.
fn decode_continue(token: &str) -> Result<(String, i64), Failure> {
    let bad = |problem: String| {
        let message = format!("invalid continue token: continue key is not valid: {problem}");
        Failure::bad_request(message)
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|e| bad(e.to_string()))?;
    let token: Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let (revision, start) = (token["rv"].as_i64().unwrap_or(0), token["start"].as_str());
    let start = start.unwrap_or("");
    let path = format!("/{}", start.trim_end_matches('\0'));
    match () {
        _ if token["v"] != "meta.k8s.io/v1" => {
            Err(bad("server does not recognize this encoded version".into()))
        }
        _ if revision == 0 => Err(bad(
            "incorrect encoded start resourceVersion (version meta.k8s.io/v1)".into(),
        )),
        _ if start.is_empty() => Err(bad(
            "encoded start key empty (version meta.k8s.io/v1)".into()
        )),
        _ if path.split('/').any(|p| p == ".." || p == ".") => Err(bad(start.into())),
        _ => Ok((start.to_owned(), revision)),
    }
}

/// Where a continued list starts: after the last key returned (a start key ends in NUL).
fn start_bound(kind: &Kind, namespace: Option<&str>, start: &str) -> Result<Bound<Key>, Failure> {
    let (at, bound): (_, fn(Key) -> Bound<Key>) = match start.strip_suffix('\0') {
        Some(at) => (at, Bound::Excluded),
        None => (start, Bound::Included),
    };
    let (ns, name) = match namespace {
        None if kind.namespaced => at.split_once('/').unwrap_or((at, "")),
        _ => (namespace.unwrap_or(""), at),
    };
    Ok(bound(key(kind, ns, name)))
}

/// A label selector: comma-separated requirements, equality- and set-based.
pub(super) struct Selector(Vec<Requirement>);

/// A label key, how it is compared, and the values.
struct Requirement(String, Op, Vec<String>);

enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Selector {
    fn parse(text: &str) -> Result<Selector, Failure> {
        let (mut parts, mut depth, mut from) = (Vec::new(), 0, 0);
        for (i, c) in text.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&text[from..i]);
                    from = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&text[from..]);
        let requirements = parts.into_iter().map(Requirement::parse);
        requirements.collect::<Result<_, _>>().map(Selector)
    }

    fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        self.0.iter().all(|Requirement(key, op, values)| {
            let label = labels[key].as_str();
            let listed = label.is_some_and(|v| values.iter().any(|x| x == v));
            match op {
                Op::In => listed,
                Op::NotIn => !listed,
                Op::Exists => label.is_some(),
                Op::DoesNotExist => label.is_none(),
            }
        })
    }
}

impl Requirement {
    /// `a=b`, `a==b`, `a!=b` (as `in`/`notin` of one value), `a`, `!a`, `a in (b,c)`, `a notin (b)`.
    fn parse(text: &str) -> Result<Requirement, Failure> {
        let unparsable = |found: &str, expected: &str| {
            let found = format!("found '{found}', expected: {expected}");
            Failure::bad_request(format!("unable to parse requirement: {found}"))
        };
        let (negated, text) = match text.trim().strip_prefix('!') {
            Some(rest) => (true, rest.trim_start()),
            None => (false, text.trim()),
        };
        let end = text.find(|c: char| !(c.is_ascii_alphanumeric() || "._-/".contains(c)));
        let (key, rest) = text.split_at(end.unwrap_or(text.len()));
        let (key, rest) = (key.to_owned(), rest.trim());
        if key.is_empty() {
            return Err(unparsable(text, "identifier"));
        }
        let requirement = |op, values: &str| {
            let values: Vec<String> = values.split(',').map(|v| v.trim().to_owned()).collect();
            let valid = |v: &String| v.chars().all(|c| c.is_alphanumeric() || "._-".contains(c));
            match values.iter().all(valid) {
                true => Ok(Requirement(key.clone(), op, values)),
                false => Err(unparsable(rest, "a valid label value")),
            }
        };
        fn inside(after: &str) -> Option<&str> {
            after.trim().strip_prefix('(')?.strip_suffix(')')
        }
        let set = |op, after: &str| match inside(after) {
            Some(values) => requirement(op, values),
            None => Err(unparsable(after, "'(' and ')' around the values")),
        };
        let word = |w: &str| rest.strip_prefix(w).filter(|r| r.starts_with([' ', '(']));
        match rest {
            "" if negated => Ok(Requirement(key, Op::DoesNotExist, vec![])),
            _ if negated => Err(unparsable(rest, "',' or 'end of string'")),
            "" => Ok(Requirement(key, Op::Exists, vec![])),
            _ if rest.starts_with("!=") => requirement(Op::NotIn, &rest[2..]),
            _ if rest.starts_with("==") => requirement(Op::In, &rest[2..]),
            _ if rest.starts_with('=') => requirement(Op::In, &rest[1..]),
            _ => match (word("notin"), word("in")) {
                (Some(after), _) => set(Op::NotIn, after),
                (_, Some(after)) => set(Op::In, after),
                _ => Err(unparsable(rest, "'=', '!=', '==', 'in', 'notin'")),
            },
        }
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let fields = target.as_object_mut().expect("an object");
    for (key, value) in patch {
        if value.is_null() {
            fields.remove(key);
        } else {
            merge_patch(fields.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}
