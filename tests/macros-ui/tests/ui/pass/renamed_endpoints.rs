//! `#[vsp(name = "...")]` renames the wire name; `#[vsp(idempotent)]` is listed.

#[vsp::service]
pub trait LegacyApi {
    #[vsp(name = "getUser")]
    async fn get_user(&self, user_id: String) -> String;
    #[vsp(idempotent, name = "ping")]
    async fn ping(&self) -> bool;
    #[vsp(idempotent)]
    async fn list(&self) -> Vec<String>;
}

fn main() {
    assert_eq!(LegacyApiClient::SERVICE_NAME, "legacy-api");
    assert_eq!(LegacyApiClient::GET_USER, "getUser");
    assert_eq!(LegacyApiClient::PING, "ping");
    let names: Vec<_> = LegacyApiClient::ENDPOINTS.iter().map(|e| (e.name, e.idempotent)).collect();
    assert_eq!(names, [("getUser", false), ("ping", true), ("list", true)]);
}
