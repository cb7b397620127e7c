use crate::harness::*;

#[test]
fn quickstart_builds_tests_and_deploys_releases_keeping_the_newest_three() {
    let p = Project::copy_of("examples/quickstart");
    let first = p.run(&[]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let exec = first.json();
    assert_eq!(status(&exec), "Succeeded");
    let id1 = exec["execution_id"].as_str().unwrap().to_string();

    // Source snapshot: four files, and the artifact digest as a variable.
    let snap = action(&exec, "Source/Snapshot");
    assert_eq!(snap["variables"]["FileCount"], "4");
    assert_eq!(snap["variables"]["Digest"], snap["artifacts"]["src"]);
    assert!(
        snap["plugin"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("blake3:")
    );
    // The build really ran, and the test saw its output.
    assert!(
        action(&exec, "Build/Compile")["variables"]["Version"]
            .as_str()
            .unwrap()
            .starts_with("1.0.")
    );
    assert_eq!(action(&exec, "Build/Test")["variables"]["Pages"], "3");

    // Deployed: current -> releases/<execution id>, content and executable bit intact.
    let current = std::fs::read_link(p.path(".sluice/site/current")).unwrap();
    assert_eq!(current, std::path::Path::new("releases").join(&id1));
    assert!(
        p.read(".sluice/site/current/index.html")
            .contains("<h1>Hello from Sluice</h1>")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(p.path(".sluice/site/current/healthcheck.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_ne!(mode & 0o100, 0, "executable bit lost");
    assert_eq!(action(&exec, "Deploy/Release")["variables"]["Previous"], "");

    // A second run with an overridden variable replaces the release and reports the previous one.
    let second = p.run(&["--var", "title=Second build"]).json();
    assert_eq!(status(&second), "Succeeded");
    let id2 = second["execution_id"].as_str().unwrap().to_string();
    assert_eq!(
        action(&second, "Deploy/Release")["variables"]["Previous"],
        id1.as_str()
    );
    assert!(
        p.read(".sluice/site/current/index.html")
            .contains("<h1>Second build</h1>")
    );

    // keep: 3 prunes the oldest releases.
    for _ in 0..2 {
        assert_eq!(p.run(&[]).code, 0);
    }
    let mut releases: Vec<String> = std::fs::read_dir(p.path(".sluice/site/releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    releases.sort();
    assert_eq!(releases.len(), 3, "{releases:?}");
    assert!(!releases.contains(&id1) && releases.contains(&id2));
}

#[test]
fn quickstart_prints_progress_when_piped() {
    let p = Project::copy_of("examples/quickstart");
    let run = p.sluice(&["run", "pipeline.yaml"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for line in [
        "stage Source",
        "Source/Snapshot",
        "Build/Compile",
        "Deploy/Release",
        "Succeeded pipeline quickstart",
    ] {
        assert!(
            run.stdout.contains(line),
            "missing {line:?} in:\n{}",
            run.stdout
        );
    }
    assert!(!run.stdout.contains("\x1b["), "no colors when piped");
}
