#[vsp::service]
pub trait Api {
    async fn get_user(&self, id: u64) -> String;
}

#[vsp::call(Api::get_user)]
async fn fetch(client: &vsp::VspClient, id: u64) -> Result<String, vsp::VspError> {
    todo()
}

fn todo() -> ! {
    loop {}
}

fn main() {}
