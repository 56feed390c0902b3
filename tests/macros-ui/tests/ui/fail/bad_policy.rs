// A declared call policy is checked against its method: the hash key must name a plain
// argument, only an idempotent method is hedged, one hedge kind at a time, no zero timeout.
#[vsp::service]
trait Accounts {
    #[vsp(hash_key = "account")]
    async fn balance(&self, user: String) -> i64;

    #[vsp(hedge_after_ms = 20)]
    async fn debit(&self, user: String, amount: i64) -> i64;

    #[vsp(idempotent, hedge_after_ms = 20, hedge_percentile = 0.95)]
    async fn lookup(&self, user: String) -> i64;

    #[vsp(timeout_ms = 0, hedge_percentile = 95.0)]
    async fn audit(&self, user: String) -> i64;
}

fn main() {}
