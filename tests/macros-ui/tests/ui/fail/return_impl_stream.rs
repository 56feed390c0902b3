use futures::Stream;

#[vsp::service]
pub trait Ticks {
    async fn ticks(&self, n: u64) -> impl Stream<Item = u64>;
}

fn main() {}
