//! `gcs-sink` binary: see `sensorflow_sink::app`.
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sensorflow_sink::app::main(sensorflow_sink::app::SinkArgs::parse()).await
}
