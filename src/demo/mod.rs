//! Placeholder: the demo target lands from its own branch.

pub async fn run_demo(_otlp: Option<String>, _protocol: String, _duration: Option<u64>) -> anyhow::Result<i32> {
    anyhow::bail!("the demo is not built yet")
}
