//! Client-side metrics: per service and endpoint (calls, errors by code, latency, retries,
//! failovers) and per instance (ejections, re-admissions, open connections), as figures and as
//! Prometheus text.

use std::time::Duration;

use serde_json::{json, Value};
use vsp::{HealthPolicy, ServiceInfo, ServiceMesh, VspClient, VspError, VspManager};
use vsp_test_support::wait_until;

async fn echo_server(port: u16) -> VspManager {
    let manager = VspManager::builder("metered").build();
    manager
        .endpoint("echo", |args: Value| async move { Ok::<_, VspError>(args) })
        .unwrap();
    manager
        .endpoint("fail", |_: Value| async move { Err::<Value, _>("refused") })
        .unwrap();
    manager.start_server("127.0.0.1", port).await.unwrap();
    manager
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_errors_failovers_ejections_and_readmissions_are_counted_and_rendered() {
    let live = echo_server(0).await;
    let live_addr = live.local_addr().unwrap();
    // An instance nobody listens on yet: calls to it fail over, and it is ejected.
    let dead_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mesh = ServiceMesh::builder()
        .health_policy(HealthPolicy {
            failure_threshold: 1,
            base_ejection: Duration::from_millis(50),
            max_ejection: Duration::from_millis(100),
        })
        .build();
    mesh.register(ServiceInfo::new("metered", "127.0.0.1", dead_port))
        .unwrap();
    mesh.register(ServiceInfo::new(
        "metered",
        "127.0.0.1",
        live_addr.port().unwrap(),
    ))
    .unwrap();
    let client = VspClient::builder(mesh).build();
    for i in 0..4 {
        client
            .call("metered", "echo", json!({"i": i}))
            .await
            .unwrap();
    }
    assert!(client.call("metered", "fail", json!({})).await.is_err());
    assert!(client.call("metered", "missing", json!({})).await.is_err());

    let metrics = client.metrics();
    let echo = &metrics.calls["metered"]["echo"];
    assert_eq!(echo.calls, 4);
    assert!(echo.errors.is_empty(), "{echo:?}");
    assert_eq!(
        echo.retries, 1,
        "one call was sent to the dead instance first"
    );
    assert_eq!(echo.failovers, 1);
    assert!(
        echo.p50 > Duration::ZERO && echo.p99 >= echo.p50,
        "{echo:?}"
    );
    assert_eq!(metrics.calls["metered"]["fail"].errors["handler"], 1);
    assert_eq!(metrics.calls["metered"]["missing"].errors["not_found"], 1);
    let dead_name = format!("127.0.0.1:{dead_port}");
    let instance = |metrics: &vsp::ClientMetrics, name: &str| {
        metrics
            .instances
            .iter()
            .find(|i| i.instance == name)
            .cloned()
            .unwrap_or_else(|| panic!("no instance {name} in {:?}", metrics.instances))
    };
    let dead = instance(&metrics, &dead_name);
    assert_eq!(
        (dead.ejections, dead.readmissions, dead.connections),
        (1, 0, 0)
    );
    let live_name = live_addr.to_string();
    assert!(instance(&metrics, &live_name).connections >= 1);
    assert!(metrics.pool.created >= 1);

    let text = metrics.to_prometheus();
    for line in [
        "vsp_client_calls_total{service=\"metered\",endpoint=\"echo\"} 4".to_owned(),
        "vsp_client_errors_total{service=\"metered\",endpoint=\"fail\",code=\"handler\"} 1"
            .to_owned(),
        "vsp_client_errors_total{service=\"metered\",endpoint=\"missing\",code=\"not_found\"} 1"
            .to_owned(),
        "vsp_client_retries_total{service=\"metered\",endpoint=\"echo\"} 1".to_owned(),
        "vsp_client_failovers_total{service=\"metered\",endpoint=\"echo\"} 1".to_owned(),
        format!(
            "vsp_client_instance_ejections_total{{service=\"metered\",instance=\"{dead_name}\"}} 1"
        ),
        format!("vsp_client_instance_up{{service=\"metered\",instance=\"{dead_name}\"}} 0"),
        format!("vsp_client_pool_connections{{service=\"metered\",instance=\"{dead_name}\"}} 0"),
    ] {
        assert!(text.contains(&line), "missing `{line}` in:\n{text}");
    }
    assert!(
        text.contains("# TYPE vsp_client_call_seconds summary"),
        "{text}"
    );
    assert!(
        text.contains(
            "vsp_client_call_seconds{service=\"metered\",endpoint=\"echo\",quantile=\"0.99\"}"
        ),
        "{text}"
    );

    // The instance comes up: a probe re-admits it.
    let revived = echo_server(dead_port).await;
    wait_until(
        "the revived instance's re-admission",
        Duration::from_secs(10),
        || instance(&client.metrics(), &dead_name).readmissions == 1,
    )
    .await;
    let text = client.metrics().to_prometheus();
    let line = format!(
        "vsp_client_instance_readmissions_total{{service=\"metered\",instance=\"{dead_name}\"}} 1"
    );
    assert!(text.contains(&line), "missing `{line}` in:\n{text}");
    revived.shutdown().await.unwrap();
    live.shutdown().await.unwrap();
}
