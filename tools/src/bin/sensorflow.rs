//! `sensorflow`: operations on a pipeline's topics (create, wait for drain, summary).

use anyhow::Context;
use clap::{Parser, Subcommand};
use sensorflow_kafka::config::{KafkaArgs, TopicArgs};
use sensorflow_kafka::{acls, admin};
use sensorflow_runtime::args::FramingArgs;
use sensorflow_tools::summary;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// sensorflow: tools for a SensorFlow pipeline's topics.
#[derive(Parser)]
#[command(name = "sensorflow", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    topics: TopicArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the pipeline's nine topics (or check their partition counts), with the topic
    /// configuration given here; existing topics whose values differ are altered.
    ///
    /// The dead-letter and late topics carry whole input records plus headers: a created one
    /// gets `max.message.bytes` = the inputs' limit + 64 KiB (Kafka's default 1,048,588 + 65,536 =
    /// 1,114,124, or the `--config max.message.bytes` given + 65,536).
    CreateTopics {
        /// Partitions per topic.
        #[arg(long, default_value_t = 100)]
        partitions: i32,
        /// Replication factor.
        #[arg(long, default_value_t = 1)]
        replication: i32,
        /// `retention.ms` of every topic, ms; -1 keeps records forever. Record timestamps are
        /// event times: data replayed with historic dates needs -1 (or more than its age),
        /// else the broker deletes it by age. Default: the broker's (Kafka: 7 days), enough
        /// for `replay`'s default (`--base-date yesterday`).
        #[arg(long, allow_hyphen_values = true)]
        retention_ms: Option<i64>,
        /// Topic configuration of every topic, `key=value` (repeatable), for example
        /// `--config max.message.bytes=2097152`; `--retention-ms` wins for `retention.ms`.
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_config)]
        config: Vec<(String, String)>,
    },
    /// Wait until consumer groups have no lag on their inputs.
    Wait {
        /// `group=topic,topic` pairs, e.g. `sensorflow-window=SZ`.
        #[arg(long = "group", required = true, value_parser = parse_group)]
        groups: Vec<(String, Vec<String>)>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
    },
    /// Print the Kafka ACLs a pipeline's principal needs (operator and processors share it)
    /// on a broker with an authorizer; nothing is sent to the broker. Without `--principal`:
    /// one line per ACL and who needs it (the table of docs/security.md); with it: one
    /// `kafka-acls.sh` command line per ACL.
    Acls {
        /// Prefix of the pipeline's own topics (the names `<prefix><role>`).
        #[arg(long)]
        topic_prefix: String,
        /// Prefix of the consumer groups and transactional ids (`<prefix>-window`, …); the
        /// ACLs are on `<prefix>-`.
        #[arg(long)]
        group_prefix: String,
        /// An input topic named explicitly outside the prefix (repeatable): Read only.
        #[arg(long = "input")]
        inputs: Vec<String>,
        /// deliveryGuarantee ExactlyOnce: adds the transactional-id ACL.
        #[arg(long)]
        exactly_once: bool,
        /// Print `kafka-acls.sh` commands for this principal (e.g. `User:CN=my-user`).
        #[arg(long)]
        principal: Option<String>,
    },
    /// Print the pipeline summary (counts, alerts, latency) after a replay.
    Summary {
        /// The replay's --summary-json file.
        #[arg(long)]
        replay_summary: PathBuf,
        /// Seconds from replay start until the pipeline drained (for throughput).
        #[arg(long)]
        drained_s: Option<f64>,
        #[command(flatten)]
        framing: FramingArgs,
        /// Also write the summary as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn parse_config(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or("expected key=value")?;
    if k.is_empty() {
        return Err("empty key".into());
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// `s` single-quoted for a POSIX shell when it holds anything but `[A-Za-z0-9._:=/-]`.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:=/-".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn parse_group(s: &str) -> Result<(String, Vec<String>), String> {
    let (g, t) = s.split_once('=').ok_or("expected group=topic,topic")?;
    Ok((g.to_owned(), t.split(',').map(str::to_owned).collect()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    sensorflow_process::telemetry::init(sensorflow_process::telemetry::LogFormat::Text);
    let cli = Cli::parse();
    let cfg = cli.kafka.client_config();
    let topics = cli.topics.topics();
    match cli.cmd {
        Cmd::CreateTopics {
            partitions,
            replication,
            retention_ms,
            config,
        } => {
            let mut common: BTreeMap<String, String> = config.into_iter().collect();
            if let Some(r) = retention_ms {
                common.insert("retention.ms".into(), r.to_string());
            }
            let configs = sensorflow_kafka::topic_configs(&topics, &common, |_| BTreeMap::new());
            admin::ensure_topics_with(&cfg, &topics.all(), partitions, replication, &configs)
                .await?;
            println!(
                "{} topics ready with {partitions} partitions",
                topics.all().len()
            );
        }
        Cmd::Wait { groups, timeout_s } => {
            let started = Instant::now();
            let mut last_log = Instant::now();
            loop {
                let mut total = 0;
                for (g, ts) in &groups {
                    let refs: Vec<&str> = ts.iter().map(String::as_str).collect();
                    match tokio::task::block_in_place(|| admin::group_lag(&cfg, g, &refs)) {
                        Ok(lag) => total += lag,
                        // A broker busy with leader or metadata changes answers a watermark
                        // query with a retriable error (seen: NotLeaderForPartition under a
                        // full-speed replay): ask again, until the timeout.
                        Err(e) => {
                            tracing::warn!(group = %g, error = %e, "lag unknown this time; retrying");
                            total += 1;
                        }
                    }
                }
                if total == 0 {
                    println!("drained after {:.1} s", started.elapsed().as_secs_f64());
                    break;
                }
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(timeout_s),
                    "still {total} messages of lag after {timeout_s} s"
                );
                if last_log.elapsed() > Duration::from_secs(5) {
                    tracing::info!(lag = total, "waiting for the consumer groups to catch up");
                    last_log = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Cmd::Acls {
            topic_prefix,
            group_prefix,
            inputs,
            exactly_once,
            principal,
        } => {
            let acls = acls::pipeline_acls(&acls::PipelineAclInput {
                topic_prefix,
                group_prefix,
                named_inputs: inputs,
                exactly_once,
            });
            for a in &acls {
                match &principal {
                    None => println!("{a}\t# {}", a.why),
                    Some(p) => println!(
                        "kafka-acls.sh --bootstrap-server {} {}",
                        cli.kafka.bootstrap_servers,
                        a.acl_command_args(p)
                            .iter()
                            .map(|x| shell_quote(x))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ),
                }
            }
        }
        Cmd::Summary {
            replay_summary,
            drained_s,
            framing,
            json,
        } => {
            let replay: sensorflow_tools::replay::ReplaySummary = serde_json::from_slice(
                &std::fs::read(&replay_summary)
                    .with_context(|| format!("reading {}", replay_summary.display()))?,
            )?;
            let drained = drained_s.unwrap_or(replay.elapsed_s);
            let s = tokio::task::block_in_place(|| {
                summary::summarize(&cfg, &topics, framing.framing())
            })?;
            print!("{}", summary::render(&replay, &s, drained));
            if let Some(path) = json {
                std::fs::write(
                    path,
                    serde_json::to_vec_pretty(
                        &serde_json::json!({"replay": replay, "pipeline": s, "drained_s": drained}),
                    )?,
                )?;
            }
        }
    }
    Ok(())
}
