//! Both binaries run straight from the build folder (RUNPATH, library lookup) and document
//! their interface; a bad flag is a usage error (exit 2), not a panic.

use cls_tests::bin;
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
