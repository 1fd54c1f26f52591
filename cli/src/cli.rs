//! The command line's shape: every command, its arguments and an example for each.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::output::Format;

/// `gantry`: drive a Gantry training cluster from the shell.
#[derive(Parser, Debug)]
#[command(
    name = "gantry",
    version,
    about = "Drive a Gantry GPU training cluster: users, tokens, nodes, datasets, training jobs and models",
    long_about = "Drive a Gantry GPU training cluster over its REST API: users, tokens, nodes, \
                  datasets, training jobs and models.\n\n\
                  The server and API token come from --url, GANTRY_URL and GANTRY_TOKEN, the \
                  login saved by `gantry login`, or the local stack started by \
                  deploy/local/up.sh (found from the repository), in that order.",
    after_help = "Examples:\n  \
        gantry login --url http://127.0.0.1:8080\n  \
        gantry nodes list\n  \
        gantry train /datasets/shapes --output-model Shapes --follow\n  \
        gantry models download Shapes\n  \
        gantry jobs list --output json"
)]
pub struct Cli {
    /// Server URL (default: GANTRY_URL, then the saved login, then the local stack)
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// Output format: aligned tables for people, or JSON for scripts
    #[arg(long, global = true, value_enum, default_value = "table")]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Save the server URL and an API token for later commands
    #[command(after_help = "Examples:\n  \
        gantry login --url http://gantry.internal:8080            # asks for the API token\n  \
        echo \"$TOKEN\" | gantry login --url http://127.0.0.1:8080 --token-stdin\n  \
        gantry login --url http://127.0.0.1:8080 --username admin   # asks for the password, makes a token\n  \
        gantry login --show\n  \
        gantry login --forget")]
    Login(LoginArgs),
    /// Users and their credit tokens (admins)
    #[command(subcommand)]
    Users(UsersCmd),
    /// Your own API tokens
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// The cluster: tokens GPU machines join with
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Nodes, their GPUs and processes; driver choice and draining (admins)
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// List a directory of the server's data root (admins)
    #[command(after_help = "Examples:\n  \
        gantry browse\n  \
        gantry browse /datasets/shapes\n  \
        gantry browse /datasets --output json")]
    Browse(BrowseArgs),
    /// Train an image classifier on an ImageFolder dataset under the data root
    #[command(after_help = "Examples:\n  \
        gantry train /datasets/shapes --output-model Shapes --follow\n  \
        gantry train /datasets/shapes --output-model Shapes --epochs 20 --image-size 32 --driver cuda\n  \
        gantry train /datasets/shapes --output-model Shapes     # queue it and return; then: gantry jobs follow ID")]
    Train(TrainArgs),
    /// Classify an image, or a folder of images under the data root, with a trained model
    #[command(after_help = "Examples:\n  \
        gantry analyze Shapes /datasets/shapes/circle/circle_0001.png\n  \
        gantry analyze Shapes@2 /datasets/new --top-k 1\n  \
        gantry analyze Shapes /datasets/new --owner 7 --output json   # admins: another user's model\n\n\
        A folder of more images than one request answers (GANTRY_ANALYZE_MAX_IMAGES) is queued as\n\
        an analysis job: the command follows it with a progress bar, then prints every result.")]
    Analyze(AnalyzeArgs),
    /// Training jobs: list, show, cancel, follow
    #[command(subcommand)]
    Jobs(JobsCmd),
    /// Trained models: list, show, download the weights
    #[command(subcommand)]
    Models(ModelsCmd),
    /// Print a shell completion script
    #[command(after_help = "Examples:\n  \
        gantry completions bash > ~/.local/share/bash-completion/completions/gantry\n  \
        gantry completions zsh > ~/.zfunc/_gantry\n  \
        gantry completions fish > ~/.config/fish/completions/gantry.fish")]
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Read the API token from standard input instead of asking for it
    #[arg(long, conflicts_with = "username")]
    pub token_stdin: bool,
    /// Log in with this user's password instead, and save a new API token for this machine
    #[arg(long)]
    pub username: Option<String>,
    /// With --username: read the password from standard input instead of asking for it
    #[arg(long, requires = "username")]
    pub password_stdin: bool,
    /// Show where commands go now and as whom, and change nothing
    #[arg(long, conflicts_with_all = ["token_stdin", "username", "forget"])]
    pub show: bool,
    /// Forget the saved login
    #[arg(long, conflicts_with_all = ["token_stdin", "username"])]
    pub forget: bool,
}

#[derive(Subcommand, Debug)]
pub enum UsersCmd {
    /// List every user
    #[command(after_help = "Examples:\n  gantry users list\n  gantry users list --output json")]
    List,
    /// Create a user
    #[command(after_help = "Examples:\n  \
        echo 's3cret-pass' | gantry users create alice --email alice@example.com --password-stdin --tokens 500\n  \
        gantry users create bob --email bob@example.com --role admin   # asks for the password")]
    Create {
        /// Login name: 3 to 64 letters, digits, '.', '_' or '-'
        username: String,
        /// E-mail address
        #[arg(long)]
        email: String,
        /// Read the password (8+ characters) from standard input instead of asking for it
        #[arg(long)]
        password_stdin: bool,
        /// admin or user
        #[arg(long, value_parser = ["admin", "user"], default_value = "user")]
        role: String,
        /// Starting credit tokens
        #[arg(long)]
        tokens: Option<i64>,
    },
    /// Change a user: role, activation, e-mail, password, credit tokens
    #[command(after_help = "Examples:\n  \
        gantry users update alice --add-tokens 1000 --reason 'monthly grant'\n  \
        gantry users update alice --active false\n  \
        gantry users update 3 --role admin --email alice@corp.example")]
    Update {
        /// The user's id or username
        user: String,
        /// New role: admin or user
        #[arg(long, value_parser = ["admin", "user"])]
        role: Option<String>,
        /// Activate (true) or deactivate (false)
        #[arg(long)]
        active: Option<bool>,
        /// New e-mail address
        #[arg(long)]
        email: Option<String>,
        /// Read a new password from standard input
        #[arg(long)]
        password_stdin: bool,
        /// Add credit tokens (negative takes away)
        #[arg(long, allow_negative_numbers = true)]
        add_tokens: Option<i64>,
        /// Why the balance changes, for the ledger
        #[arg(long, requires = "add_tokens")]
        reason: Option<String>,
    },
    /// Delete a user: their sessions and API tokens stop working; their jobs, models and
    /// ledger are kept under their id
    #[command(after_help = "Examples:\n  gantry users delete alice\n  gantry users delete 7")]
    Delete {
        /// The user's id or username
        user: String,
    },
    /// A user's credit ledger, newest first: charges, refunds and adjustments
    #[command(after_help = "Examples:\n  \
        gantry users ledger alice\n  \
        gantry users ledger 7 --limit 200 --output json")]
    Ledger {
        /// The user's id or username
        user: String,
        /// Most entries shown (1 to 200)
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=200))]
        limit: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokensCmd {
    /// List your API tokens (never whole)
    #[command(after_help = "Examples:\n  gantry tokens list")]
    List,
    /// Create an API token; it is shown whole this once
    #[command(after_help = "Examples:\n  gantry tokens create ci-pipeline")]
    Create {
        /// A name to recognise it by
        name: String,
    },
    /// Revoke one of your API tokens; it stops working at once
    #[command(after_help = "Examples:\n  gantry tokens revoke 65f1c0de9a8b7c6d5e4f3a21")]
    Revoke {
        /// The token's id (see `gantry tokens list`)
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    /// Cluster tokens, which GPU machines join with (admins)
    #[command(subcommand)]
    Tokens(ClusterTokensCmd),
}

#[derive(Subcommand, Debug)]
pub enum ClusterTokensCmd {
    /// List cluster tokens (never whole)
    #[command(after_help = "Examples:\n  gantry cluster tokens list")]
    List,
    /// Create a cluster token; it is shown whole this once
    #[command(after_help = "Examples:\n  \
        gantry cluster tokens create rack-7\n  \
        GANTRY_CLUSTER_TOKEN=$(gantry cluster tokens create rack-8 --output json | jq -r .token)")]
    Create {
        /// A name to recognise it by
        name: String,
    },
    /// Revoke a cluster token: its nodes are disconnected and cannot join again
    #[command(after_help = "Examples:\n  gantry cluster tokens revoke 3")]
    Revoke {
        /// The token's id (see `gantry cluster tokens list`)
        id: i64,
    },
}

/// Which node: its hostname, and its cluster token where several nodes share the hostname.
#[derive(Args, Debug)]
pub struct NodeRef {
    /// The node's hostname
    pub hostname: String,
    /// Its cluster token, whole or as listed, or the token's name (needed only when several
    /// nodes share the hostname)
    #[arg(long)]
    pub token: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum NodesCmd {
    /// List nodes with their GPUs, workers and jobs
    #[command(after_help = "Examples:\n  gantry nodes list\n  gantry nodes list --output json")]
    List,
    /// Show one node: inventory, settings and processes
    #[command(after_help = "Examples:\n  gantry nodes show gpu-node-1")]
    Show(NodeRef),
    /// Choose a node's driver: cuda, rocm, cpu, or auto to clear the choice
    #[command(after_help = "Examples:\n  \
        gantry nodes set-driver gpu-node-1 rocm\n  \
        gantry nodes set-driver gpu-node-1 any --token rack-7")]
    SetDriver {
        #[command(flatten)]
        node: NodeRef,
        /// cuda, rocm, cpu, or any for no preference (auto means the same)
        #[arg(value_parser = ["cuda", "rocm", "cpu", "any", "auto"])]
        driver: String,
    },
    /// Drain a node: it finishes what it runs and takes no new work
    #[command(after_help = "Examples:\n  gantry nodes drain gpu-node-1")]
    Drain(NodeRef),
    /// Let a drained node take work again
    #[command(after_help = "Examples:\n  gantry nodes undrain gpu-node-1")]
    Undrain(NodeRef),
}

#[derive(Args, Debug)]
pub struct BrowseArgs {
    /// Directory under the data root
    #[arg(default_value = "/")]
    pub path: String,
    /// Entries per page
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
    /// Entries to skip
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// The dataset: a directory under the data root with one folder of images per class
    pub path: String,
    /// Name of the model to train (a new version each time)
    #[arg(long)]
    pub output_model: String,
    /// Description kept on the model card
    #[arg(long, default_value = "")]
    pub description: String,
    /// Passes over the data (1-200; server default 10)
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Images per step (1-1024; server default 32)
    #[arg(long)]
    pub batch_size: Option<u32>,
    /// Learning rate (0-1; server default 0.003)
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Images are resized to this square (16-512; by default chosen from the data)
    #[arg(long)]
    pub image_size: Option<u32>,
    /// Share of each class held out for validation (0.05-0.5; server default 0.2)
    #[arg(long)]
    pub validation_split: Option<f64>,
    /// Train on the images as they are, without random shifts of a few pixels
    #[arg(long)]
    pub no_augment: bool,
    /// Flip training images left to right at random (not for digits, arrows or text)
    #[arg(long)]
    pub hflip: bool,
    /// Mixed precision: bf16 autocast on GPUs that support it (CPU nodes ignore it)
    #[arg(long)]
    pub bf16: bool,
    /// cuda, rocm, cpu or any
    #[arg(long, value_parser = ["cuda", "rocm", "cpu", "any"])]
    pub driver: Option<String>,
    /// Follow the job with a live progress bar until it ends (Ctrl-C stops following, the job
    /// goes on)
    #[arg(long)]
    pub follow: bool,
}

#[derive(Args, Debug)]
pub struct AnalyzeArgs {
    /// The model: NAME (its latest version) or NAME@VERSION
    pub model: String,
    /// An image, or a folder of images, under the data root
    pub path: String,
    /// Labels per image, most probable first (1-100; server default 5)
    #[arg(long)]
    pub top_k: Option<u32>,
    /// Admins: the user id owning the model, when several users have one of that name
    #[arg(long)]
    pub owner: Option<i64>,
    /// Backend of a queued analysis (more images than one request answers)
    #[arg(long, value_parser = ["cuda", "rocm", "cpu", "any"])]
    pub driver: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum JobsCmd {
    /// List jobs, newest first, with progress, queue position and why they wait
    #[command(after_help = "Examples:\n  \
        gantry jobs list\n  \
        gantry jobs list --status running\n  \
        gantry jobs list --limit 200 --output json")]
    List {
        /// Only jobs in this state
        #[arg(long, value_parser = ["queued", "running", "completed", "failed", "cancelled"])]
        status: Option<String>,
        /// Jobs per page (1-500)
        #[arg(long, default_value_t = 50)]
        limit: u64,
        /// Jobs to skip
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// Show one job
    #[command(after_help = "Examples:\n  gantry jobs show 7f0c3f9e2b7d4c1a9e8b6d5c4b3a2f1e")]
    Show {
        /// The job's id
        id: String,
    },
    /// Cancel a job
    #[command(after_help = "Examples:\n  gantry jobs cancel 7f0c3f9e2b7d4c1a9e8b6d5c4b3a2f1e")]
    Cancel {
        /// The job's id
        id: String,
    },
    /// Follow a job's progress live until it ends (Ctrl-C stops following, the job goes on)
    #[command(after_help = "Examples:\n  \
        gantry jobs follow 7f0c3f9e2b7d4c1a9e8b6d5c4b3a2f1e\n  \
        gantry jobs follow 7f0c3f9e2b7d4c1a9e8b6d5c4b3a2f1e --output json   # one event per line")]
    Follow {
        /// The job's id
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ModelsCmd {
    /// List models with their latest version
    #[command(after_help = "Examples:\n  gantry models list")]
    List,
    /// Show a model's versions and their cards
    #[command(
        after_help = "Examples:\n  gantry models show Shapes\n  gantry models show Shapes --output json"
    )]
    Show {
        /// The model's name
        name: String,
    },
    /// Download a version's weights (safetensors), checking size and SHA-256
    #[command(after_help = "Examples:\n  \
        gantry models download Shapes                  # the latest version, into ./Shapes-v<N>.safetensors\n  \
        gantry models download Shapes --version 2 --file /tmp/shapes.safetensors")]
    Download {
        /// The model's name
        name: String,
        /// The version (default: the latest)
        #[arg(long)]
        version: Option<u32>,
        /// Where to write the weights (default: ./<name>-v<version>.safetensors)
        #[arg(long)]
        file: Option<PathBuf>,
    },
}
