//! Both binaries run straight from the build folder (RUNPATH, library lookup) and document
//! their interface; a bad flag is a usage error (exit 2), not a panic.

use cls_tests::{bin, fails_cleanly, output_within, RUN_LIMIT};
use std::process::Command;

#[test]
fn binaries_print_help_with_their_main_flags() {
    for (name, flags) in [
        (
            "cls-train",
            &["--data", "--method", "--partial", "--tau-h", "--backbone", "--freeze-backbone", "--resume", "--device"]
                [..],
        ),
        (
            "cls-infer",
            &["--model", "--images", "--threshold", "--ground-truth", "--baseline", "--tolerance", "--shard"][..],
        ),
    ] {
        let out = Command::new(bin(name)).env_remove("LD_LIBRARY_PATH").arg("--help").output().unwrap();
        assert!(out.status.success(), "{name} --help: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        for f in flags {
            assert!(text.contains(f), "{name} --help lacks {f}");
        }
        let out = Command::new(bin(name)).arg("--no-such-flag").output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}: usage errors exit 2");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    }
    let out = Command::new(bin("cls-train")).args(["export", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--checkpoint"));
}

/// `--version` names the commit the binary was built from and the runtime it uses.
#[test]
fn versions_name_the_commit_and_the_runtime() {
    let text = |name: &str| {
        let out = output_within(Command::new(bin(name)).arg("--version"), RUN_LIMIT);
        assert!(out.status.success(), "{name} --version");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let train = text("cls-train");
    assert!(train.contains("commit ") && train.contains("libtorch 2.11"), "{train}");
    let infer = text("cls-infer");
    assert!(infer.contains("commit ") && infer.contains("ONNX Runtime: 1."), "{infer}");
}

/// libgomp reads its settings when libtorch is loaded, before `main`: cls-train restarts itself
/// with a short spin (GOMP_SPINCOUNT=1000) when the user chose neither a wait policy nor a spin
/// count (`info` reports what libgomp saw at start, from /proc/self/environ, which a `set_var`
/// inside `main` would not change), and leaves a user's choice alone.
#[test]
fn openmp_spins_briefly_unless_the_user_chose() {
    let seen = |env: &[(&str, Option<&str>)]| {
        let mut cmd = Command::new(bin("cls-train"));
        cmd.arg("info");
        for (k, v) in env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let out = output_within(&mut cmd, RUN_LIMIT);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let get = |k: &str| info[k].as_str().map(str::to_string);
        (get("omp_wait_policy"), get("gomp_spincount"))
    };
    let unset = [("OMP_WAIT_POLICY", None), ("GOMP_SPINCOUNT", None)];
    assert_eq!(seen(&unset), (None, Some("1000".into())));
    assert_eq!(seen(&[("OMP_WAIT_POLICY", Some("ACTIVE")), ("GOMP_SPINCOUNT", None)]), (Some("ACTIVE".into()), None));
    assert_eq!(seen(&[("OMP_WAIT_POLICY", None), ("GOMP_SPINCOUNT", Some("0"))]), (None, Some("0".into())));
    // An empty value is no choice (libgomp ignores it too).
    assert_eq!(
        seen(&[("OMP_WAIT_POLICY", Some("")), ("GOMP_SPINCOUNT", None)]),
        (Some(String::new()), Some("1000".into()))
    );
}

/// Completion scripts that bash really loads, and man pages that start as roff does.
#[test]
fn completions_load_in_bash_and_man_pages_are_roff() {
    for (name, args) in [("cls-train", &["completions", "bash"][..]), ("cls-infer", &["--generate", "bash"][..])] {
        let script = output_within(Command::new(bin(name)).args(args), RUN_LIMIT);
        assert!(script.status.success(), "{name} {args:?}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("completion.bash");
        std::fs::write(&file, &script.stdout).unwrap();
        let check = output_within(
            Command::new("bash").arg("-c").arg(format!("source {} && complete -p {name}", file.display())),
            RUN_LIMIT,
        );
        let registered = String::from_utf8_lossy(&check.stdout);
        assert!(check.status.success() && registered.contains(name), "{name}: {registered}");
    }
    for (name, args) in [("cls-train", &["man"][..]), ("cls-infer", &["--generate", "man"][..])] {
        let page = output_within(Command::new(bin(name)).args(args), RUN_LIMIT);
        let text = String::from_utf8_lossy(&page.stdout);
        assert!(page.status.success() && text.contains(".TH") && text.contains("\\-\\-"), "{name} man page:\n{text}");
    }
}

/// Flags with a fixed set of values fail when the command line is read (exit 2), listing the
/// choices, before any work; errors of either binary start with its name.
#[test]
fn typed_flags_fail_at_parse_time_and_errors_carry_the_program_name() {
    for (flag, value, shown) in [
        ("--method", "cls-x", "co-teaching-plus"),
        ("--reduction", "avg", "mean"),
        ("--backbone", "resnet19", "efficientnet-lite0"),
        ("--export", "both", "ensemble"),
        ("--device", "gpu", "cuda:N"),
        ("--tau-h", "much", "auto"),
        ("--partial", "1.5", "single"),
    ] {
        let err = fails_cleanly(Command::new(bin("cls-train")).args([flag, value]), 2);
        assert!(err.contains(value) && err.contains(shown), "{flag} {value}:\n{err}");
    }
    let err = fails_cleanly(
        Command::new(bin("cls-infer")).args(["--model", "x.onnx", "--images", ".", "--device", "tpu"]),
        2,
    );
    assert!(err.contains("tpu"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.jsonl");
    let err = fails_cleanly(
        Command::new(bin("cls-train")).arg("--data").arg(&missing).arg("--run-dir").arg(dir.path().join("r")),
        1,
    );
    assert!(err.starts_with("cls-train: error:"), "{err}");
    let err = fails_cleanly(Command::new(bin("cls-infer")).args(["--model"]).arg(&missing).args(["--images", "."]), 2);
    assert!(err.lines().any(|l| l.starts_with("cls-infer: error:")), "{err}");
}

/// An unreadable image is named once in the message, not twice.
#[test]
fn an_unreadable_training_image_is_named_once() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = cls_tests::write_images(dir.path(), 8, 3, "imgs");
    std::fs::write(dir.path().join("imgs/003.png"), b"not a png").unwrap();
    let err = fails_cleanly(
        Command::new(bin("cls-train"))
            .arg("--data")
            .arg(&manifest)
            .args(["--backbone", "resnet18", "--resize", "32x32", "--crop", "32x32", "--epochs", "1", "--threads", "1"])
            .args(["--batch-size", "4", "--partial", "full", "--pretrained", "none"])
            .arg("--run-dir")
            .arg(dir.path().join("run"))
            .arg("--cache-dir")
            .arg(dir.path().join("cache")),
        1,
    );
    let line = err.lines().find(|l| l.contains("003.png")).unwrap_or_else(|| panic!("no line names the file:\n{err}"));
    assert_eq!(line.matches("003.png").count(), 1, "{line}");
}
