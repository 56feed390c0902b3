//! A fake Consul agent for the tests: no real agent can be installed on these machines. It keeps
//! state and follows Consul's documented HTTP API: service register and deregister, TCP checks that
//! really dial the instance, TTL checks with pass/warn/fail, the `passing` filter, and blocking
//! queries that wait until the index changes or `wait` passes. It speaks just enough HTTP/1.1.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CheckStatus {
    Passing,
    Warning,
    Critical,
}

impl CheckStatus {
    fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone)]
enum CheckKind {
    Tcp {
        target: String,
        interval: Duration,
        last_run: Option<Instant>,
    },
    Ttl {
        ttl: Duration,
        last_update: Instant,
    },
    None,
}

#[derive(Debug, Clone)]
pub struct Registration {
    pub body: Value,
    pub status: CheckStatus,
    kind: CheckKind,
}

#[derive(Debug, Clone)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub token: Option<String>,
}

#[derive(Default)]
struct State {
    index: u64,
    services: BTreeMap<String, Registration>,
    requests: Vec<LoggedRequest>,
    garbage: bool,
}

pub struct FakeConsul {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    tasks: Mutex<JoinSet<()>>,
}

fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim().trim_matches('"');
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    if let Some(m) = text.strip_suffix('m') {
        return m.parse::<u64>().ok().map(|m| Duration::from_secs(m * 60));
    }
    text.strip_suffix('s')?
        .parse::<f64>()
        .ok()
        .map(Duration::from_secs_f64)
}

impl FakeConsul {
    pub async fn start() -> Arc<FakeConsul> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = Arc::new(FakeConsul {
            addr: listener.local_addr().unwrap(),
            state: Arc::new(Mutex::new(State {
                index: 1,
                ..State::default()
            })),
            changed: Arc::new(Notify::new()),
            tasks: Mutex::new(JoinSet::new()),
        });
        let (state, changed) = (fake.state.clone(), fake.changed.clone());
        let mut tasks = fake.tasks.lock().unwrap();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(serve(stream, state.clone(), changed.clone()));
            }
        });
        let (state, changed) = (fake.state.clone(), fake.changed.clone());
        tasks.spawn(run_checks(state, changed));
        drop(tasks);
        fake
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops answering: the listener and every connection close.
    pub fn stop(&self) {
        self.tasks.lock().unwrap().abort_all();
    }

    /// Health answers become malformed JSON.
    pub fn answer_garbage(&self) {
        self.state.lock().unwrap().garbage = true;
    }

    pub fn registrations(&self) -> BTreeMap<String, Registration> {
        self.state.lock().unwrap().services.clone()
    }

    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn set_status(&self, id: &str, status: CheckStatus) {
        let mut state = self.state.lock().unwrap();
        if let Some(service) = state.services.get_mut(id) {
            service.status = status;
            state.index += 1;
            self.changed.notify_waiters();
        }
    }
}

/// Runs TCP checks (a real dial) at their interval, and expires TTL checks.
async fn run_checks(state: Arc<Mutex<State>>, changed: Arc<Notify>) {
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let due: Vec<(String, String)> = {
            let mut state = state.lock().unwrap();
            let now = Instant::now();
            let mut expired = false;
            let mut due = Vec::new();
            for (id, service) in state.services.iter_mut() {
                match &mut service.kind {
                    CheckKind::Tcp {
                        target,
                        interval,
                        last_run,
                    } => {
                        if last_run.is_none_or(|at| now.duration_since(at) >= *interval) {
                            *last_run = Some(now);
                            due.push((id.clone(), target.clone()));
                        }
                    }
                    CheckKind::Ttl { ttl, last_update } => {
                        if service.status != CheckStatus::Critical
                            && now.duration_since(*last_update) > *ttl
                        {
                            service.status = CheckStatus::Critical;
                            expired = true;
                        }
                    }
                    CheckKind::None => {}
                }
            }
            if expired {
                state.index += 1;
                changed.notify_waiters();
            }
            due
        };
        for (id, target) in due {
            let reachable = matches!(
                tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(&target)).await,
                Ok(Ok(_))
            );
            let status = if reachable {
                CheckStatus::Passing
            } else {
                CheckStatus::Critical
            };
            let mut state = state.lock().unwrap();
            let changed_now = state
                .services
                .get_mut(&id)
                .is_some_and(|service| std::mem::replace(&mut service.status, status) != status);
            if changed_now {
                state.index += 1;
                changed.notify_waiters();
            }
        }
    }
}

struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    token: Option<String>,
    body: Vec<u8>,
}

async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let header_end = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?.to_owned();
    let mut content_length = 0;
    let mut token = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => content_length = value.trim().parse().ok()?,
            "x-consul-token" => token = Some(value.trim().to_owned()),
            _ => {}
        }
    }
    let mut body = buf[header_end + 4..].to_vec();
    while body.len() < content_length {
        let mut chunk = vec![0u8; content_length - body.len()];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter_map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    Some(Request {
        method,
        path: path.to_owned(),
        query,
        token,
        body,
    })
}

async fn respond(stream: &mut TcpStream, status: &str, index: u64, body: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Consul-Index: {index}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

async fn serve(mut stream: TcpStream, state: Arc<Mutex<State>>, changed: Arc<Notify>) {
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    state.lock().unwrap().requests.push(LoggedRequest {
        method: request.method.clone(),
        path: request.path.clone(),
        query: request.query.clone(),
        token: request.token.clone(),
    });
    let bump = |guard: &mut State| {
        guard.index += 1;
        changed.notify_waiters();
    };
    let decoded: Vec<String> = request
        .path
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    match (request.method.as_str(), segments.as_slice()) {
        ("PUT", ["v1", "agent", "service", "register"]) => {
            let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
                return respond(&mut stream, "400 Bad Request", 0, "\"bad json\"").await;
            };
            let id = body["ID"]
                .as_str()
                .or(body["Name"].as_str())
                .unwrap_or_default()
                .to_owned();
            let check = &body["Check"];
            let kind = if let Some(target) = check["TCP"].as_str() {
                CheckKind::Tcp {
                    target: target.to_owned(),
                    interval: parse_duration(check["Interval"].as_str().unwrap_or("10s")).unwrap(),
                    last_run: None,
                }
            } else if let Some(ttl) = check["TTL"].as_str() {
                CheckKind::Ttl {
                    ttl: parse_duration(ttl).unwrap(),
                    last_update: Instant::now(),
                }
            } else {
                CheckKind::None
            };
            // Consul starts checks critical; a service without one is passing.
            let status = if matches!(kind, CheckKind::None) {
                CheckStatus::Passing
            } else {
                CheckStatus::Critical
            };
            let index = {
                let mut guard = state.lock().unwrap();
                guard
                    .services
                    .insert(id, Registration { body, status, kind });
                bump(&mut guard);
                guard.index
            };
            respond(&mut stream, "200 OK", index, "").await
        }
        ("PUT", ["v1", "agent", "service", "deregister", id]) => {
            let (found, index) = {
                let mut guard = state.lock().unwrap();
                let found = guard.services.remove(*id).is_some();
                if found {
                    bump(&mut guard);
                }
                (found, guard.index)
            };
            let status = if found { "200 OK" } else { "404 Not Found" };
            respond(&mut stream, status, index, "").await
        }
        ("PUT", ["v1", "agent", "check", verb @ ("pass" | "warn" | "fail"), check_id]) => {
            let id = check_id.trim_start_matches("service:");
            let status = match *verb {
                "pass" => CheckStatus::Passing,
                "warn" => CheckStatus::Warning,
                _ => CheckStatus::Critical,
            };
            let index = {
                let mut guard = state.lock().unwrap();
                match guard.services.get_mut(id) {
                    None => None,
                    Some(service) => {
                        if let CheckKind::Ttl { last_update, .. } = &mut service.kind {
                            *last_update = Instant::now();
                        }
                        if std::mem::replace(&mut service.status, status) != status {
                            bump(&mut guard);
                        }
                        Some(guard.index)
                    }
                }
            };
            match index {
                Some(index) => respond(&mut stream, "200 OK", index, "").await,
                None => respond(&mut stream, "404 Not Found", 0, "\"unknown check\"").await,
            }
        }
        ("GET", ["v1", "health", "service", name]) => {
            // A blocking query waits while the index is the one the caller already has.
            if let Some(index) = request
                .query
                .get("index")
                .and_then(|i| i.parse::<u64>().ok())
            {
                let wait = request
                    .query
                    .get("wait")
                    .and_then(|w| parse_duration(w))
                    .unwrap_or(Duration::from_secs(300));
                let deadline = tokio::time::Instant::now() + wait;
                loop {
                    let notified = changed.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    if state.lock().unwrap().index > index {
                        break;
                    }
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        break;
                    }
                }
            }
            let passing_only = request.query.get("passing").is_some_and(|v| v != "false");
            let (index, body) = {
                let guard = state.lock().unwrap();
                (guard.index, answer(&guard, name, passing_only))
            };
            respond(&mut stream, "200 OK", index, &body).await
        }
        _ => respond(&mut stream, "404 Not Found", 0, "\"no such endpoint\"").await,
    }
}

fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&segment[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The body of a health answer.
fn answer(state: &State, name: &str, passing_only: bool) -> String {
    if state.garbage {
        return "[{\"Node\": oops".to_owned();
    }
    let entries: Vec<Value> = state
                .services
                .values()
                .filter(|s| s.body["Name"] == name)
                .filter(|s| !passing_only || s.status == CheckStatus::Passing)
                .map(|s| {
                    let body = &s.body;
                    json!({
                        "Node": {"ID": "node-id", "Node": "fake-node", "Address": "127.0.0.1", "Datacenter": "dc1"},
                        "Service": {
                            "ID": body["ID"], "Service": body["Name"], "Tags": body["Tags"],
                            "Address": body["Address"], "Meta": body["Meta"], "Port": body["Port"],
                            "Weights": body["Weights"],
                        },
                        "Checks": [{"CheckID": format!("service:{}", body["ID"].as_str().unwrap_or("")), "Status": s.status.as_str()}],
                    })
                })
                .collect();
    Value::Array(entries).to_string()
}
