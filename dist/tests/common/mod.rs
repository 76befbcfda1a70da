//! Launching ranks of `albef-dist-check` on 127.0.0.1 for the tests, and waiting for them with
//! a deadline, so that a hang fails the test instead of stalling it.
#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

pub const CHECK: &str = env!("CARGO_BIN_EXE_albef-dist-check");

/// A port nobody listens on now and not handed out before in this process: the tests of one
/// binary run at once, and the OS may hand a port just released out again, which would join
/// the ranks of two tests in one store.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A rank started as torchrun would start it (rank 0 serves the store), and its output.
pub struct Rank {
    pub child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
}

pub fn spawn_rank(rank: usize, world_size: usize, port: u16, args: &[&str]) -> Rank {
    spawn_rank_with(rank, world_size, port, args, &[])
}

/// `spawn_rank` with more environment variables.
pub fn spawn_rank_with(
    rank: usize,
    world_size: usize,
    port: u16,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Rank {
    let mut command = Command::new(CHECK);
    command.args(args).envs(envs.iter().copied());
    spawn(rank_env(&mut command, rank, world_size, "127.0.0.1", port))
}

/// Sets torchrun's variables for `rank` on `command`.
pub fn rank_env<'a>(
    command: &'a mut Command,
    rank: usize,
    world_size: usize,
    master_addr: &str,
    port: u16,
) -> &'a mut Command {
    command
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world_size.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", master_addr)
        .env("MASTER_PORT", port.to_string())
        .env("OMP_NUM_THREADS", "1")
        .env_remove("TORCHELASTIC_USE_AGENT_STORE")
}

/// Starts `command` with its output captured line by line.
pub fn spawn(command: &mut Command) -> Rank {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start albef-dist-check");
    let stdout = lines(child.stdout.take().unwrap());
    let stderr = lines(child.stderr.take().unwrap());
    Rank {
        child,
        stdout,
        stderr,
    }
}

pub fn spawn_world(world_size: usize, args: &[&str]) -> Vec<Rank> {
    let port = free_port();
    (0..world_size)
        .map(|r| spawn_rank(r, world_size, port, args))
        .collect()
}

fn lines(pipe: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (send, receive) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    receive
}

impl Rank {
    /// Waits for a line of stdout containing `text`; panics with stderr after `limit`.
    pub fn wait_for_line(&mut self, text: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.stdout.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        panic!(
            "no line with {text:?} within {limit:?}; stderr:\n{}",
            self.stderr_text()
        );
    }

    /// Waits for the exit; kills the rank and panics if it runs past `limit`.
    pub fn wait(&mut self, limit: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.stderr_text());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("rank hung past {limit:?}; stderr:\n{}", self.stderr_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the rank wrote to stderr so far (all of it once it has exited).
    fn stderr_text(&self) -> String {
        let mut text = String::new();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(200)) {
            text.push_str(&line);
            text.push('\n');
        }
        text
    }
}

impl Drop for Rank {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
