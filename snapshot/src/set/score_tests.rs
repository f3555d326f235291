use super::*;

fn board(n: usize, opts: SetOptions) -> Board {
    let names: Vec<String> = (0..n).map(|i| format!("d{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    Board::new(&names, opts)
}

const MS: Duration = Duration::from_millis(1);

#[test]
fn unknown_latency_keeps_member_order() {
    let b = board(3, SetOptions::default());
    assert_eq!(b.order(&[0, 1, 2]), vec![0, 1, 2]);
    assert_eq!(b.order(&[2, 0]), vec![2, 0]);
}

#[test]
fn faster_average_first_and_unknown_ties_with_best() {
    let b = board(3, SetOptions::default());
    b.served(0, 30 * MS, false);
    b.served(1, 10 * MS, false);
    // 2 is unknown: counts as the best known (10 ms), after 1 by member order.
    assert_eq!(b.order(&[0, 1, 2]), vec![1, 2, 0]);
    let stats = b.stats();
    assert_eq!(stats.members[1].latency_ewma_micros, 10_000);
    assert_eq!(stats.members[2].latency_ewma_micros, 0);
    assert_eq!(stats.members[0].served, 1);
}

#[test]
fn recent_errors_rank_last_until_the_penalty_ends() {
    let b = board(3, SetOptions::default());
    b.served(0, MS, false);
    b.served(1, 5 * MS, false);
    b.served(2, 9 * MS, false);
    b.failed(0, false);
    b.failed(1, true);
    b.failed(1, false);
    // 0 has 1 consecutive error, 1 has 2.
    assert_eq!(b.order(&[0, 1, 2]), vec![2, 0, 1]);
    let stats = b.stats();
    assert_eq!((stats.members[1].errors, stats.members[1].corrupt), (1, 1));

    let no_penalty = board(
        2,
        SetOptions {
            penalty: Duration::ZERO,
            ..SetOptions::default()
        },
    );
    no_penalty.served(0, MS, false);
    no_penalty.served(1, 5 * MS, false);
    no_penalty.failed(0, false);
    assert_eq!(no_penalty.order(&[0, 1]), vec![0, 1]);
}

#[test]
fn hedge_deadline_is_three_times_latency_within_bounds() {
    let opts = SetOptions {
        hedge_min: 50 * MS,
        hedge_max: 1000 * MS,
        penalty: Duration::from_secs(10),
    };
    let b = board(3, opts);
    assert_eq!(
        b.hedge_deadline(&[0, 1]),
        50 * MS,
        "unknown latency: the minimum"
    );
    b.served(0, 100 * MS, false);
    assert_eq!(b.hedge_deadline(&[0]), 300 * MS);
    assert_eq!(
        b.hedge_deadline(&[0, 1]),
        300 * MS,
        "unknown averages are skipped"
    );
    b.served(1, 5 * MS, false);
    assert_eq!(b.hedge_deadline(&[1]), 50 * MS);
    assert_eq!(
        b.hedge_deadline(&[0, 1]),
        50 * MS,
        "the best holder sets the deadline, not the first"
    );
    b.served(2, 900 * MS, false);
    assert_eq!(b.hedge_deadline(&[2]), 1000 * MS);
    let inverted = board(
        1,
        SetOptions {
            hedge_min: 2000 * MS,
            ..opts
        },
    );
    assert_eq!(inverted.hedge_deadline(&[0]), 1000 * MS, "the cap wins");
}

#[test]
fn an_outrun_request_only_raises_the_average() {
    let b = board(2, SetOptions::default());
    b.outrun(0, 200 * MS);
    assert_eq!(b.stats().members[0].latency_ewma_micros, 200_000);
    b.served(1, 100 * MS, false);
    b.outrun(1, MS);
    assert_eq!(b.stats().members[1].latency_ewma_micros, 100_000);
    b.outrun(1, 200 * MS);
    assert_eq!(b.stats().members[1].latency_ewma_micros, 120_000);
    assert_eq!(b.stats().members[1].served, 1, "outrun is not a read");
}

#[test]
fn totals_count_fallbacks_and_hedges() {
    let b = board(2, SetOptions::default());
    b.hedged(1);
    b.served(1, MS, true);
    b.served(0, MS, false);
    b.repaired(0);
    let s = b.stats();
    assert_eq!((s.fallbacks, s.hedges), (1, 1));
    assert_eq!(s.members[1].hedges_started, 1);
    assert_eq!(s.members[0].hedges_started, 0);
    assert_eq!(s.members[0].repaired, 1);
    assert_eq!(s.members[0].name, "d0");
}
