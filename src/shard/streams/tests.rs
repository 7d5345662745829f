use super::*;

fn settings() -> StreamSettings {
    StreamSettings {
        synthetic: SyntheticSpec {
            rate_hz: 1000,
            chunk_bytes: 16,
        },
        buffer_chunks: 8,
        replay_window: 100,
    }
}

const NOW: u64 = 1_800_000_000_000_000;

#[tokio::test]
async fn synthetic_cursor_resumes_without_gap_or_duplicate() {
    let reg = StreamRegistry::new(settings());
    let name = StreamName::new("synth/t").unwrap();
    let spec = settings().synthetic;
    let live = spec.live_seq(NOW);
    let start = live.checked_sub(5).unwrap();
    let mut cur = reg.subscribe(&name, Some(start), NOW);
    reg.tick(NOW + 3000); // three periods later
    let mut got = Vec::new();
    for _ in 0..9 {
        match cur.next().await.unwrap() {
            Item::Chunk(c) => {
                assert!(crate::synthetic::verify(
                    stream_seed(&name),
                    c.seq,
                    &c.payload
                ));
                got.push(c.seq)
            }
            g => panic!("unexpected {g:?}"),
        }
    }
    let want: Vec<_> = (start.get()..=live.get() + 3).map(Seq::new).collect();
    assert_eq!(got, want);
}

#[test]
fn buffered_bytes_follow_what_streams_hold() {
    let reg = StreamRegistry::new(settings());
    let live = reg.stream(&StreamName::new("live/b").unwrap(), NOW);
    let chunk = |seq: u64, len| Chunk {
        seq: Seq::new(seq),
        timestamp_us: seq,
        payload: bytes::Bytes::from(vec![0; len]),
    };
    // Sizes 1..=12 into a buffer of 8: the last 8 (5..=12) stay.
    for seq in 1..=12u64 {
        live.publish(chunk(seq, seq as usize)).unwrap();
    }
    assert_eq!(live.held_bytes(), (5..=12).sum::<u64>());
    assert!(!live.publish(chunk(3, 1000)).unwrap());
    assert_eq!(
        live.held_bytes(),
        (5..=12).sum::<u64>(),
        "a replay adds nothing"
    );
    // A synthetic stream buffers nothing; the registry sums the live ones.
    let name = StreamName::new("synth/b").unwrap();
    let _cursor = reg.subscribe(&name, None, NOW);
    let period = settings().synthetic.period_us();
    for i in 1..100 {
        reg.tick(NOW + i * period);
    }
    assert_eq!(reg.buffered_bytes(), (5..=12).sum::<u64>());
    // A dropped stream holds nothing.
    drop(live);
    reg.tick(NOW + 100 * period);
    assert_eq!(reg.buffered_bytes(), 0);
}

#[tokio::test]
async fn too_old_resume_reports_a_gap() {
    let reg = StreamRegistry::new(settings());
    let name = StreamName::new("synth/t").unwrap();
    let live = settings().synthetic.live_seq(NOW);
    let start = live.checked_sub(500).unwrap();
    let mut cur = reg.subscribe(&name, Some(start), NOW);
    match cur.next().await.unwrap() {
        Item::Gap { from, to } => {
            assert_eq!(from, start);
            assert_eq!(to, live.checked_sub(1 + 100).unwrap());
        }
        other => panic!("expected a gap, got {other:?}"),
    }
}

#[tokio::test]
async fn live_stream_buffer_and_lag() {
    let reg = StreamRegistry::new(settings());
    let name = StreamName::new("live/t").unwrap();
    let s = reg.stream(&name, NOW);
    let mut early = reg.subscribe(&name, None, NOW);
    let chunk = |seq: u64| Chunk {
        seq: Seq::new(seq),
        timestamp_us: seq,
        payload: bytes::Bytes::new(),
    };
    for seq in 10..40 {
        assert!(s.publish(chunk(seq)).unwrap());
    }
    assert!(!s.publish(chunk(39)).unwrap(), "duplicate is dropped");
    // The early cursor lagged past the buffer (8): it gets a gap, then the buffered tail.
    let mut items = Vec::new();
    while items.len() < 9 {
        items.push(early.next().await.unwrap());
    }
    let gap = Item::Gap {
        from: Seq::new(10),
        to: Seq::new(32),
    };
    assert_eq!(items[0], gap, "{items:?}");
    let tail: Vec<_> = (32..40).map(|s| Item::Chunk(chunk(s))).collect();
    assert_eq!(items[1..], tail[..]);
    // A late cursor resuming inside the buffer gets exactly the rest.
    let mut late = reg.subscribe(&name, Some(Seq::new(38)), NOW);
    assert_eq!(late.next().await, Some(Item::Chunk(chunk(38))));
    assert_eq!(late.next().await, Some(Item::Chunk(chunk(39))));
}

mod seq_limits {
    use std::time::Duration;

    use super::*;

    fn chunk(seq: Seq) -> Chunk {
        Chunk {
            seq,
            timestamp_us: 1,
            payload: bytes::Bytes::new(),
        }
    }

    async fn next_soon(cur: &mut Cursor) -> Option<Option<Item>> {
        tokio::time::timeout(Duration::from_millis(50), cur.next())
            .await
            .ok()
    }

    #[tokio::test]
    async fn a_live_stream_ends_at_the_last_sequence_and_refuses_max() {
        let reg = StreamRegistry::new(settings());
        let name = StreamName::new("live/end").unwrap();
        let s = reg.stream(&name, NOW);
        let mut early = reg.subscribe(&name, None, NOW);
        let before = Seq::LAST.prev().unwrap();
        assert_eq!(s.publish(chunk(Seq::MAX)), Err(PublishError::SeqExhausted));
        assert_eq!(PublishError::SeqExhausted.code(), ErrorCode::SeqExhausted);
        assert_eq!(s.last_seq(), None, "a refused chunk changes nothing");
        assert_eq!(s.publish(chunk(before)), Ok(true));
        assert_eq!(s.publish(chunk(Seq::LAST)), Ok(true));
        assert_eq!(s.publish(chunk(Seq::MAX)), Err(PublishError::SeqExhausted));
        assert_eq!(
            s.publish(chunk(Seq::LAST)),
            Ok(false),
            "a replay is dropped"
        );
        assert_eq!(s.last_seq(), Some(Seq::LAST));
        // The cursor delivers both, then waits at `Seq::MAX`: nothing can follow.
        assert_eq!(early.next().await, Some(Item::Chunk(chunk(before))));
        assert_eq!(early.next().await, Some(Item::Chunk(chunk(Seq::LAST))));
        assert_eq!(next_soon(&mut early).await, None);
        // A late cursor from before the buffer gets a gap, then the tail.
        let mut late = reg.subscribe(&name, Some(Seq::ZERO), NOW);
        let gap = Item::Gap {
            from: Seq::ZERO,
            to: before,
        };
        assert_eq!(late.next().await, Some(gap));
        assert_eq!(late.next().await, Some(Item::Chunk(chunk(before))));
        assert_eq!(late.next().await, Some(Item::Chunk(chunk(Seq::LAST))));
        assert_eq!(next_soon(&mut late).await, None);
    }

    #[tokio::test]
    async fn a_cursor_from_max_waits_without_delivering() {
        let reg = StreamRegistry::new(settings());
        for name in ["live/max", "synth/max"] {
            let name = StreamName::new(name).unwrap();
            let s = reg.stream(&name, NOW);
            if !name.is_synthetic() {
                s.publish(chunk(Seq::new(5))).unwrap();
            }
            let mut cur = reg.subscribe(&name, Some(Seq::MAX), NOW);
            reg.tick(NOW + 5_000);
            if !name.is_synthetic() {
                s.publish(chunk(Seq::new(6))).unwrap();
                s.publish(chunk(Seq::LAST)).unwrap();
            }
            assert_eq!(next_soon(&mut cur).await, None, "{name}");
        }
    }

    #[tokio::test]
    async fn a_lagging_cursor_near_the_end_catches_up() {
        let reg = StreamRegistry::new(StreamSettings {
            buffer_chunks: 4,
            ..settings()
        });
        let name = StreamName::new("live/lag").unwrap();
        let s = reg.stream(&name, NOW);
        let mut cur = reg.subscribe(&name, None, NOW);
        // More than the broadcast channel holds (16), ending at `Seq::LAST`.
        let first = Seq::LAST.checked_sub(39).unwrap();
        for n in 0..40 {
            s.publish(chunk(first.checked_add(n).unwrap())).unwrap();
        }
        let mut got = Vec::new();
        while let Some(Some(item)) = next_soon(&mut cur).await {
            got.push(item);
        }
        assert_eq!(got.last(), Some(&Item::Chunk(chunk(Seq::LAST))), "{got:?}");
        assert!(
            matches!(got[0], Item::Gap { from, .. } if from == first),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn an_idle_ticker_waits_until_a_stream_exists() {
        let reg = Arc::new(StreamRegistry::new(settings()));
        let waiting = {
            let reg = reg.clone();
            tokio::spawn(async move { reg.wait_for_stream().await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "no stream yet: the ticker sleeps");
        reg.warm(&StreamName::new("synth/w").unwrap(), NOW, 1_000_000);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken by the new stream")
            .unwrap();
        // With a stream held, it returns at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), reg.wait_for_stream())
            .await
            .expect("a stream exists");
    }

    #[tokio::test]
    async fn a_cursor_ends_after_the_last_chunk_once_and_a_copy_ends_when_it_holds_the_last() {
        let reg = StreamRegistry::new(settings());
        let name = StreamName::new("live/end").unwrap();
        let live = reg.stream(&name, NOW);
        let chunk = |seq: u64| Chunk {
            seq: Seq::new(seq),
            timestamp_us: seq,
            payload: bytes::Bytes::from_static(b"x"),
        };
        let mut cur = reg.subscribe(&name, None, NOW);
        live.publish(chunk(1)).unwrap();
        live.publish(chunk(2)).unwrap();
        live.end();
        let mut got = Vec::new();
        loop {
            match cur.next().await.unwrap() {
                Item::Chunk(c) => got.push(c.seq.get()),
                Item::End { last } => {
                    assert_eq!(last, Some(Seq::new(2)));
                    break;
                }
                g => panic!("unexpected {g:?}"),
            }
        }
        assert_eq!(got, [1, 2], "every chunk before the end");
        // Told once: the cursor then waits, and a publisher again makes the stream go on.
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), cur.next()).await;
        assert!(waited.is_err(), "the end was yielded twice: {waited:?}");
        live.publish(chunk(3)).unwrap();
        assert!(matches!(cur.next().await, Some(Item::Chunk(c)) if c.seq == Seq::new(3)));

        // A copy told of an end after a chunk it lacks (lost: the sender tells the end after
        // everything it sent) ends now; one told of an end it is past ignores it.
        let copy = reg.stream(&StreamName::new("live/copy").unwrap(), NOW);
        let mut cur = reg.subscribe(copy.name(), None, NOW);
        copy.publish(chunk(1)).unwrap();
        copy.publish(chunk(2)).unwrap();
        copy.end_after(Some(Seq::new(3)));
        assert!(matches!(cur.next().await, Some(Item::Chunk(c)) if c.seq == Seq::new(1)));
        assert!(matches!(cur.next().await, Some(Item::Chunk(c)) if c.seq == Seq::new(2)));
        assert_eq!(
            cur.next().await,
            Some(Item::End {
                last: Some(Seq::new(2))
            })
        );
        copy.publish(chunk(5)).unwrap();
        copy.end_after(Some(Seq::new(4)));
        // 3 and 4 never reached the copy.
        assert_eq!(
            cur.next().await,
            Some(Item::Gap {
                from: Seq::new(3),
                to: Seq::new(5)
            })
        );
        assert!(matches!(cur.next().await, Some(Item::Chunk(c)) if c.seq == Seq::new(5)));
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), cur.next()).await;
        assert!(waited.is_err(), "a stale end ended the copy: {waited:?}");
    }
}
