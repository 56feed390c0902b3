#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Missing;

#[vsp::service]
pub trait Api {
    async fn get_user(&self, id: u64) -> Result<String, Missing>;
}

#[vsp::call(Api::get_user)]
async fn fetch(client: &vsp::VspClient, id: u64) -> Result<String, vsp::VspError>;

fn main() {}
