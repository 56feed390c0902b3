//! Methods returning nothing, `()`, a struct, a collection, and taking no arguments.

use std::collections::BTreeMap;

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub lines: Vec<String>,
}

#[vsp::service]
pub trait Reports {
    async fn touch(&self);
    async fn clear(&self) -> ();
    async fn report(&self, day: u32) -> Report;
    async fn totals(&self) -> BTreeMap<String, f64>;
}

struct Impl;

impl Reports for Impl {
    async fn touch(&self) {}
    async fn clear(&self) {}
    async fn report(&self, day: u32) -> Report {
        Report { lines: vec![day.to_string()] }
    }
    async fn totals(&self) -> BTreeMap<String, f64> {
        BTreeMap::new()
    }
}

async fn use_client(client: &ReportsClient) -> Result<(), vsp::VspError> {
    client.touch().await?;
    let () = client.clear().await?;
    let report: Report = client.report(1).await?;
    let totals: BTreeMap<String, f64> = client.totals().await?;
    let _ = (report.lines, totals);
    Ok(())
}

fn main() {
    let _server = ReportsServer::new(Impl);
    let _ = use_client;
}
