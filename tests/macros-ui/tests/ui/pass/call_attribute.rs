//! `#[vsp::call]` with the `VspClient` or the generated client, and a converted error type.

use vsp::{VspClient, VspError};

#[vsp::service]
pub trait Search {
    async fn query(&self, text: String, limit: u32) -> Vec<String>;
}

#[derive(Debug)]
pub struct AppError(String);

impl From<VspError> for AppError {
    fn from(err: VspError) -> Self {
        AppError(err.to_string())
    }
}

#[vsp::call(Search::query)]
pub async fn search(client: &VspClient, text: String, limit: u32) -> Result<Vec<String>, VspError>;

#[vsp::call(Search::query)]
async fn search_app(client: &SearchClient, text: String, limit: u32) -> Result<Vec<String>, AppError>;

fn main() {
    let _ = (search, search_app);
}
