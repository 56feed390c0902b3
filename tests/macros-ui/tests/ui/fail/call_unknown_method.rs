#[vsp::service]
pub trait Api {
    async fn get_user(&self, id: u64) -> String;
}

#[vsp::call(Api::get_usr)]
async fn fetch(client: &vsp::VspClient, id: u64) -> Result<String, vsp::VspError>;

fn main() {}
