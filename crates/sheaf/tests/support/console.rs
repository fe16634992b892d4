//! `sheaf vm console`, driven from a test: lines typed into its stdin,
//! everything it prints (stdout and stderr) collected as it comes.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::eventually;

pub struct Console {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Console {
    /// `sheaf vm console VM [-n NS] --kubeconfig KUBECONFIG`.
    pub fn open(kubeconfig: &Path, vm: &str, namespace: Option<&str>) -> Console {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sheaf"));
        cmd.args(["vm", "console", vm]);
        if let Some(ns) = namespace {
            cmd.args(["-n", ns]);
        }
        let mut child = cmd
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sheaf vm console");
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                let (mut stream, mut buf) = (stream, [0u8; 4096]);
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    output.lock().expect("lock").push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        Console { child, output }
    }

    /// Types `line` and Enter (a closed console is ignored: see `output`).
    pub fn type_line(&mut self, line: &str) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = stdin.write_all(line.as_bytes()).and_then(|_| stdin.write_all(b"\n")).and_then(|_| stdin.flush());
        }
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.output.lock().expect("lock").clone()
    }

    /// Whether the command has ended (a refused console ends at once).
    pub fn ended(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// Types `echo` of an arithmetic expression until its result shows
    /// (the shell may still be starting; the echo of the typed line itself
    /// cannot match), for up to `timeout`.
    pub fn expect_shell(&mut self, a: u32, b: u32, timeout: Duration) -> bool {
        let want = format!("SHELL-{}", a * b);
        eventually(timeout, || {
            self.type_line(&format!("echo SHELL-$(({a}*{b}))"));
            std::thread::sleep(Duration::from_millis(500));
            self.output().contains(&want) || self.ended()
        }) && self.output().contains(&want)
    }

    /// Types `line` once, then waits for `mark` (the result of an
    /// expression the line computes, not its echo).
    pub fn run(&mut self, line: &str, mark: &str, timeout: Duration) -> bool {
        self.type_line(line);
        eventually(timeout, || self.output().contains(mark))
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
