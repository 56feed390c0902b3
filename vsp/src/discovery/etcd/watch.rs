//! Reading the registrations: the prefix read whole, then watched from the next revision.

use super::*;

/// What the mesh holds from etcd: key -> (service, address).
type Known = HashMap<String, (String, Address)>;

/// Reads the prefix, then watches it from the next revision; again after any break.
// Its complexity is mostly the branches inside `tracing`'s event macros and `tokio::select!`,
// which clippy counts after expansion; the logic itself is one loop with a few outcomes.
#[allow(clippy::cognitive_complexity)]
pub(super) async fn sync_loop(shared: std::sync::Weak<Shared>, registry: MeshRegistry) {
    let mut known: Known = HashMap::new();
    let mut failures: u32 = 0;
    loop {
        if registry.is_closed() {
            return;
        }
        let Some(strong) = shared.upgrade() else {
            return;
        };
        match read_all(&strong).await {
            Ok((entries, revision)) => {
                failures = 0;
                let mut now: Known = HashMap::new();
                for (key, value) in entries {
                    if let Some((service, info)) = parse_entry(&strong.config.prefix, &key, &value)
                    {
                        if registry.upsert(info.clone()).is_ok() {
                            now.insert(key, (service, info.address().clone()));
                        }
                    }
                }
                for (key, (service, address)) in &known {
                    if !now.contains_key(key) {
                        registry.remove_at(service, address);
                    }
                }
                known = now;
                if !strong.answered.swap(true, Ordering::AcqRel) {
                    for service in registry_services(&known) {
                        registry.answered(&service);
                    }
                }
                if let Err(reason) = watch(&strong, &registry, &mut known, revision + 1).await {
                    tracing::warn!("etcd watch ended, reading again: {reason}");
                }
            }
            Err(reason) => {
                failures += 1;
                *lock(&strong.failure) = reason.clone();
                tracing::warn!("cannot read etcd, keeping the last known instances: {reason}");
            }
        }
        drop(strong);
        let backoff = (Duration::from_millis(100) * 2u32.saturating_pow(failures.min(6)))
            .min(Duration::from_secs(5));
        tokio::time::sleep(backoff).await;
    }
}

fn registry_services(known: &Known) -> Vec<String> {
    let mut services: Vec<String> = known.values().map(|(s, _)| s.clone()).collect();
    services.sort();
    services.dedup();
    services
}

/// Every key under the prefix, and the revision of the read.
async fn read_all(shared: &Shared) -> Result<(Vec<(String, Vec<u8>)>, i64), String> {
    let prefix = &shared.config.prefix;
    let answer = shared
        .post(
            "/v3/kv/range",
            &json!({ "key": base64(prefix.as_bytes()), "range_end": base64(&range_end(prefix)) }),
        )
        .await?;
    let revision = number(&answer["header"]["revision"]).unwrap_or(0);
    let mut entries = Vec::new();
    for kv in answer["kvs"].as_array().into_iter().flatten() {
        if let (Some(key), Some(value)) = (decoded(&kv["key"]), decoded(&kv["value"])) {
            entries.push((String::from_utf8_lossy(&key).into_owned(), value));
        }
    }
    Ok((entries, revision))
}

/// Follows the watch stream until it breaks; `Err` says why.
async fn watch(
    shared: &Shared,
    registry: &MeshRegistry,
    known: &mut Known,
    from: i64,
) -> Result<(), String> {
    let prefix = &shared.config.prefix;
    let body = json!({ "create_request": {
        "key": base64(prefix.as_bytes()),
        "range_end": base64(&range_end(prefix)),
        "start_revision": from.to_string(),
        "progress_notify": true,
    }});
    let mut last = String::from("no endpoint configured");
    for endpoint in &shared.config.endpoints {
        let url = format!("{}/v3/watch", endpoint.trim_end_matches('/'));
        let mut request = with_json(shared.http.post(&url), &body);
        match shared.token(endpoint).await {
            Ok(Some(token)) => request = request.header("Authorization", token),
            Ok(None) => {}
            Err(reason) => {
                last = reason;
                continue;
            }
        }
        let mut response = match tokio::time::timeout(REQUEST_TIMEOUT, request.send()).await {
            Ok(Ok(response)) if response.status().is_success() => response,
            Ok(Ok(response)) => {
                last = format!("POST {url}: {}", response.status());
                continue;
            }
            Ok(Err(err)) => {
                last = format!("POST {url}: {err}");
                continue;
            }
            Err(_) => {
                last = format!("POST {url}: no answer within {REQUEST_TIMEOUT:?}");
                continue;
            }
        };
        let mut buffer: Vec<u8> = Vec::new();
        // A watch is silent while nothing changes, so silence alone says nothing: every
        // `WATCH_KEEPALIVE` the member is asked for its status, and one that does not answer
        // (down, or blackholed by the network) ends the watch, which starts again on the
        // next member.
        let mut keepalive = tokio::time::interval(WATCH_KEEPALIVE);
        keepalive.tick().await;
        loop {
            if registry.is_closed() {
                return Ok(());
            }
            let chunk = tokio::select! {
                chunk = response.chunk() => chunk.map_err(|err| format!("the watch stream broke: {err}"))?,
                _ = keepalive.tick() => {
                    shared.member_answers(endpoint).await?;
                    continue;
                }
            };
            let Some(chunk): Option<bytes::Bytes> = chunk else {
                return Err("etcd closed the watch stream".to_owned());
            };
            if buffer.len() + chunk.len() > MAX_WATCH_MESSAGE {
                return Err(format!(
                    "a watch message from {endpoint} is over {MAX_WATCH_MESSAGE} bytes"
                ));
            }
            buffer.extend_from_slice(&chunk);
            // The gateway writes one JSON object per message, newline separated.
            while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let Ok(message) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                apply_watch_message(prefix, registry, known, &message)?;
            }
        }
    }
    Err(last)
}

fn apply_watch_message(
    prefix: &str,
    registry: &MeshRegistry,
    known: &mut Known,
    message: &Value,
) -> Result<(), String> {
    let result = &message["result"];
    if let Some(error) = message.get("error") {
        return Err(format!("etcd: {error}"));
    }
    if number(&result["compact_revision"]).unwrap_or(0) > 0 || result["canceled"] == true {
        return Err("the watch was compacted or canceled".to_owned());
    }
    for event in result["events"].as_array().into_iter().flatten() {
        let Some(key) = decoded(&event["kv"]["key"]) else {
            continue;
        };
        let key = String::from_utf8_lossy(&key).into_owned();
        if event["type"] == "DELETE" {
            if let Some((service, address)) = known.remove(&key) {
                registry.remove_at(&service, &address);
            }
            continue;
        }
        let value = decoded(&event["kv"]["value"]).unwrap_or_default();
        if let Some((service, info)) = parse_entry(prefix, &key, &value) {
            let address = info.address().clone();
            if registry.upsert(info).is_ok() {
                registry.answered(&service);
                if let Some((old_service, old)) = known.insert(key, (service, address.clone())) {
                    if old != address {
                        registry.remove_at(&old_service, &old);
                    }
                }
            }
        }
    }
    Ok(())
}

/// The instance a key and value describe; `None` (logged, naming the key) when they do not.
pub(super) fn parse_entry(prefix: &str, key: &str, value: &[u8]) -> Option<(String, ServiceInfo)> {
    let service = key.strip_prefix(prefix)?.split('/').next()?.to_owned();
    let registration: Registration = match serde_json::from_slice(value) {
        Ok(registration) => registration,
        Err(err) => {
            tracing::warn!(%key, "skipping an etcd entry that is not a VSP registration: {err}");
            return None;
        }
    };
    let address: Address = match registration.address.parse() {
        Ok(address) => address,
        Err(err) => {
            tracing::warn!(%key, "skipping an etcd entry with a bad address: {err}");
            return None;
        }
    };
    let info = ServiceInfo::at(service.as_str(), address)
        .with_weight(registration.weight)
        .with_tls(registration.tls);
    Some((service, info))
}

/// The end of the range of keys starting with `prefix` (its last byte plus one).
pub(super) fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64, as the gateway wants keys and values.
pub(super) fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A base64 JSON string decoded; `None` if it is not one.
pub(super) fn decoded(value: &Value) -> Option<Vec<u8>> {
    let text = value.as_str()?;
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut bits: u32 = 0;
    let mut count = 0;
    for byte in text.bytes() {
        if byte == b'=' {
            break;
        }
        let digit = BASE64.iter().position(|&b| b == byte)? as u32;
        bits = bits << 6 | digit;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    Some(out)
}
