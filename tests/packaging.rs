//! Shipping: shell completions that the shell accepts and that complete, a man page that `man`
//! renders without warnings, and crate metadata that `cargo package` keeps lean.

mod common;

use std::process::Command;

use common::{Sandbox, bin};

fn completions(shell: &str) -> String {
    let out = Command::new(bin())
        .args(["completions", shell])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn bash_accepts_the_completion_script_and_it_completes_subcommands_and_flags() {
    let sb = Sandbox::new();
    let script = sb.write("dispatch_runner.bash", &completions("bash"));
    let check = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // Ask the completion function itself, as bash does on TAB.
    let ask = |words: &str, cword: usize| -> Vec<String> {
        let program = format!(
            "source '{}'; COMP_WORDS=({words}); COMP_CWORD={cword}; \
             COMP_LINE='{words}'; COMP_POINT=${{#COMP_LINE}}; \
             _dispatch_runner dispatch_runner \"${{COMP_WORDS[$COMP_CWORD]}}\" \
             \"${{COMP_WORDS[$COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(program)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let subcommands = ask("dispatch_runner re", 1);
    for expected in ["report", "resume"] {
        assert!(
            subcommands.contains(&expected.to_string()),
            "{subcommands:?}"
        );
    }
    assert!(
        !subcommands.contains(&"validate".to_string()),
        "{subcommands:?}"
    );
    let flags = ask("dispatch_runner run --journal", 2);
    assert!(flags.contains(&"--journal-fsync".to_string()), "{flags:?}");
    let values = ask("dispatch_runner run --journal-fsync ''", 3);
    for expected in ["always", "interval", "never"] {
        assert!(values.contains(&expected.to_string()), "{values:?}");
    }
}

#[test]
fn every_shell_gets_a_script_and_an_unknown_shell_is_refused() {
    for (shell, marker) in [
        ("zsh", "#compdef dispatch_runner"),
        ("fish", "complete -c dispatch_runner"),
        ("powershell", "Register-ArgumentCompleter"),
        ("elvish", "edit:completion:arg-completer[dispatch_runner]"),
    ] {
        let text = completions(shell);
        assert!(text.contains(marker), "{shell}: no {marker:?}");
        assert!(text.contains("journal-fsync"), "{shell} misses a flag");
    }
    let out = Command::new(bin())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcsh"));
}

#[test]
fn completions_and_man_work_with_a_broken_configuration_file() {
    let sb = Sandbox::new();
    sb.write("dispatch.yaml", "dispatcher: [not, a, map\n");
    for args in [&["completions", "bash"][..], &["man"][..]] {
        let out = sb.cmd(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.stdout.is_empty());
    }
}

#[test]
fn man_renders_the_page_without_warnings() {
    let sb = Sandbox::new();
    let out = Command::new(bin()).arg("man").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(
        page.is_ascii(),
        "troff input must be ASCII; escapes stand for the rest"
    );
    let path = sb.write("dispatch_runner.1", &page);
    let rendered = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(&path)
        .env("MANWIDTH", "80")
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .output()
        .expect("man (Debian package man-db) is installed by scripts/install-test-deps");
    let warnings = String::from_utf8_lossy(&rendered.stderr);
    assert!(
        rendered.status.success() && warnings.trim().is_empty(),
        "{warnings}"
    );
    let text = String::from_utf8_lossy(&rendered.stdout);
    for expected in [
        "dispatch_runner",
        "SUBCOMMANDS",
        "resume",
        "--journal-fsync",
        "Exit codes",
        "×",
    ] {
        assert!(
            text.contains(expected),
            "the rendered page lacks {expected:?}"
        );
    }
}
