//! Model-based property test: random appends, pulls, acks and restarts against an in-memory
//! model of QMQ's consumption semantics.

use std::collections::HashMap;

use bytes::Bytes;
use proptest::prelude::*;
use qmq_store::{
    ConsumerKey, FlushPolicy, NewMessage, PullSpec, ResetTo, Store, StoreConfig, TagFilter, TagMode,
};

const TAGS: [&str; 3] = ["red", "green", "blue"];

#[derive(Debug, Clone)]
enum Op {
    Append {
        subject: usize,
        n: usize,
        tag: Option<usize>,
    },
    Pull {
        consumer: usize,
        subject: usize,
        max: usize,
        tag: Option<usize>,
    },
    Reset {
        subject: usize,
        latest: bool,
    },
    AckAll {
        consumer: usize,
        subject: usize,
    },
    Restart {
        clean: bool,
    },
    Checkpoint,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 1..20usize, proptest::option::of(0..3usize)).prop_map(|(subject, n, tag)| Op::Append { subject, n, tag }),
        4 => (0..3usize, 0..2usize, 1..15usize, proptest::option::weighted(0.3, 0..3usize)).prop_map(|(consumer, subject, max, tag)| Op::Pull { consumer, subject, max, tag }),
        1 => (0..2usize, any::<bool>()).prop_map(|(subject, latest)| Op::Reset { subject, latest }),
        2 => (0..3usize, 0..2usize).prop_map(|(consumer, subject)| Op::AckAll { consumer, subject }),
        1 => any::<bool>().prop_map(|clean| Op::Restart { clean }),
        1 => Just(Op::Checkpoint),
    ]
}

#[derive(Default)]
struct Model {
    subjects: [Vec<(Bytes, Option<usize>)>; 2],
    /// Next consume sequence of the one group per subject.
    next: [usize; 2],
    /// Per (consumer, subject): consume sequences pulled, and how many acked.
    pulled: HashMap<(usize, usize), (Vec<usize>, usize)>,
}

fn key(consumer: usize, subject: usize) -> ConsumerKey {
    ConsumerKey {
        subject: format!("s{subject}"),
        group: "g".into(),
        consumer: format!("c{consumer}"),
    }
}

fn open(dir: &std::path::Path) -> Store {
    let mut c = StoreConfig::new(dir);
    c.segment_size = 2048;
    c.action_segment_size = 1024;
    c.index_segment_entries = 32;
    c.flush = FlushPolicy::SyncBeforeAck;
    c.checkpoints_retained = 2;
    Store::open(c).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn store_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let mut model = Model::default();
        let mut counter = 0usize;
        for op in ops {
            match op {
                Op::Append { subject, n, tag } => {
                    let batch: Vec<NewMessage> = (0..n).map(|_| {
                        counter += 1;
                        NewMessage {
                            subject: format!("s{subject}"),
                            tags: tag.map(|t| TAGS[t].to_owned()).into_iter().collect(),
                            body: Bytes::from(format!("m{counter}")),
                        }
                    }).collect();
                    let appended = rt.block_on(store.append_messages(&batch)).unwrap();
                    for (a, m) in appended.into_iter().zip(batch) {
                        prop_assert_eq!(a.unwrap().sequence as usize, model.subjects[subject].len());
                        model.subjects[subject].push((m.body, tag));
                    }
                }
                Op::Pull { consumer, subject, max, tag } => {
                    let k = key(consumer, subject);
                    let spec = PullSpec { key: &k, broadcast: false, max };
                    let got = match tag {
                        Some(t) => store.pull_matching(spec, &TagFilter::new(TagMode::Any, vec![TAGS[t].into()])).unwrap(),
                        None => store.pull(spec, |_| true).unwrap(),
                    };
                    // The model: walk from the position, take matching ones, consume the rest.
                    let len = model.subjects[subject].len();
                    let mut seq = model.next[subject];
                    let mut want = Vec::new();
                    while seq < len && want.len() < max {
                        if tag.is_none() || model.subjects[subject][seq].1 == tag {
                            want.push(seq);
                        }
                        seq += 1;
                    }
                    let entry = model.pulled.entry((consumer, subject)).or_default();
                    let got_seqs: Vec<usize> = got.iter().map(|p| p.sequence as usize).collect();
                    prop_assert_eq!(&got_seqs, &want);
                    for (i, p) in got.iter().enumerate() {
                        prop_assert_eq!(p.pull_seq as usize, entry.0.len() + i);
                        prop_assert_eq!(&p.message, &model.subjects[subject][p.sequence as usize].0);
                    }
                    entry.0.extend(want);
                    model.next[subject] = seq;
                }
                Op::Reset { subject, latest } => {
                    let k = key(0, subject);
                    let (to, want) = if latest { (ResetTo::Latest, model.subjects[subject].len()) } else { (ResetTo::Earliest, 0) };
                    prop_assert_eq!(store.reset(&k, false, to).unwrap() as usize, want);
                    model.next[subject] = want;
                }
                Op::AckAll { consumer, subject } => {
                    let k = key(consumer, subject);
                    if let Some(entry) = model.pulled.get_mut(&(consumer, subject)) {
                        if !entry.0.is_empty() {
                            store.ack(&k, entry.0.len() as u64 - 1).unwrap();
                            entry.1 = entry.0.len();
                        }
                    }
                }
                Op::Restart { clean } => {
                    if clean {
                        store.close().unwrap();
                    }
                    drop(store);
                    store = open(dir.path());
                }
                Op::Checkpoint => store.checkpoint().unwrap(),
            }
            // Invariants after every step: progress and unacked messages match the model.
            for ((consumer, subject), (pulled, acked)) in &model.pulled {
                let k = key(*consumer, *subject);
                let p = store.progress(&k);
                prop_assert_eq!(p.pulled, pulled.len() as i64 - 1);
                prop_assert_eq!(p.acked, *acked as i64 - 1);
                let unacked = store.pulled_since(&k, *acked as u64, 1000).unwrap();
                let want: Vec<&Bytes> = pulled[*acked..].iter().map(|&s| &model.subjects[*subject][s].0).collect();
                let got: Vec<&Bytes> = unacked.iter().map(|p| &p.message).collect();
                prop_assert_eq!(got, want);
            }
            for s in 0..2 {
                prop_assert_eq!(store.subject_len(&format!("s{s}")) as usize, model.subjects[s].len());
                prop_assert_eq!(store.position(&key(0, s), false) as usize, model.next[s]);
            }
        }
    }
}
