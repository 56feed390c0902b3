#[vsp::service]
pub trait Api {
    async fn get_user(&self, id: u64) -> String;
}

#[vsp::call(Api::get_user)]
async fn fetch(client: &vsp::VspClient, id: String) -> Result<String, vsp::VspError>;

#[vsp::call(Api::get_user)]
async fn fetch_two(client: &vsp::VspClient, id: u64, extra: bool) -> Result<String, vsp::VspError>;

fn main() {}
