//! SQLite's reading blocks (migrations 0007, 0008): one stream's run of readings, committed
//! together, packed into one row. A row a reading costs SQLite a descent of the clustered
//! `readings` tree and a record a reading, ~1.7 µs each (a 1,000-reading commit was 2.2 ms of
//! a request's ~6); a block is one record and one blob, ~0.3 ms with the fsync
//! (docs/PERFORMANCE.md, "Reading blocks").
//!
//! The blob is little-endian, columnar: a version byte, the reading count `n` and the channel
//! count `c` (0 for a single-channel stream, whose rows carry no per-channel values) as `u32`,
//! then `n` timestamps (`i64`), `n` each of value, expected, lower, upper and score (`f64`
//! bits, exactly as judged), `n` anomaly bytes (0 or 1), and for `c > 0` a reading's `4c`
//! per-channel values (values, expected, lower, upper) after one another.
use super::{ChannelValues, ReadingRow, StorageError};

/// The layout written by [`encode`].
const VERSION: u8 = 1;
/// Bytes before the columns: version, reading count, channel count.
const HEADER: usize = 1 + 4 + 4;

/// `rows` (one stream's, ascending by time) as a block; `None` when their per-channel values
/// do not all have one shape (no stream writes such rows; the caller stores them as rows).
pub(crate) fn encode(rows: &[ReadingRow]) -> Option<Vec<u8>> {
    let c = rows.first()?.channels.as_ref().map_or(0, |ch| ch.values.len());
    let uniform = |ch: &Option<ChannelValues>| match ch {
        None => c == 0,
        Some(ch) => c > 0 && [&ch.values, &ch.expected, &ch.lower, &ch.upper].iter().all(|v| v.len() == c),
    };
    if !rows.iter().all(|r| uniform(&r.channels)) {
        return None;
    }
    let (n, count, channels) = (rows.len(), u32::try_from(rows.len()).ok()?, u32::try_from(c).ok()?);
    let mut data = Vec::with_capacity(HEADER + n * (6 * 8 + 1 + 4 * c * 8));
    data.push(VERSION);
    data.extend_from_slice(&count.to_le_bytes());
    data.extend_from_slice(&channels.to_le_bytes());
    data.extend(rows.iter().flat_map(|r| r.ts.to_le_bytes()));
    let fields: [fn(&ReadingRow) -> f64; 5] = [|r| r.value, |r| r.expected, |r| r.lower, |r| r.upper, |r| r.score];
    for field in fields {
        data.extend(rows.iter().flat_map(|r| field(r).to_le_bytes()));
    }
    data.extend(rows.iter().map(|r| u8::from(r.anomaly)));
    for ch in rows.iter().filter_map(|r| r.channels.as_ref()) {
        for v in [&ch.values, &ch.expected, &ch.lower, &ch.upper] {
            data.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        }
    }
    Some(data)
}

/// The readings of a block written by [`encode`], ascending by time. A blob of another
/// layout or length is corrupt.
pub(crate) fn decode(data: &[u8]) -> Result<Vec<ReadingRow>, StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt(format!("reading block: {what}"));
    let header: &[u8; HEADER] =
        data.get(..HEADER).and_then(|h| h.try_into().ok()).ok_or_else(|| corrupt("too short"))?;
    if header[0] != VERSION {
        return Err(corrupt(&format!("unknown layout {}", header[0])));
    }
    let n = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let c = u32::from_le_bytes([header[5], header[6], header[7], header[8]]) as usize;
    // Each reading: six 8-byte columns, its anomaly byte and 4c per-channel values.
    let per_reading = c.checked_mul(4 * 8).and_then(|ch| ch.checked_add(6 * 8 + 1));
    let expected_len = per_reading.and_then(|r| r.checked_mul(n)).and_then(|body| body.checked_add(HEADER));
    if expected_len != Some(data.len()) {
        return Err(corrupt(&format!("{} bytes for {n} readings of {c} channel(s)", data.len())));
    }
    let word = |at: usize| -> [u8; 8] { data[at..at + 8].try_into().expect("eight bytes, by the length check") };
    let column = |k: usize, i: usize| HEADER + (k * n + i) * 8;
    let float = |k: usize, i: usize| f64::from_le_bytes(word(column(k, i)));
    let anomalies = HEADER + 6 * n * 8;
    let per_channel = anomalies + n;
    let values = |at: usize| (0..c).map(|j| f64::from_le_bytes(word(at + j * 8))).collect::<Vec<_>>();
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        let channels = (c > 0).then(|| {
            let at = per_channel + i * 4 * c * 8;
            ChannelValues {
                values: values(at),
                expected: values(at + c * 8),
                lower: values(at + 2 * c * 8),
                upper: values(at + 3 * c * 8),
            }
        });
        rows.push(ReadingRow {
            ts: i64::from_le_bytes(word(column(0, i))),
            value: float(1, i),
            expected: float(2, i),
            lower: float(3, i),
            upper: float(4, i),
            score: float(5, i),
            anomaly: match data[anomalies + i] {
                0 => false,
                1 => true,
                other => return Err(corrupt(&format!("anomaly byte {other}"))),
            },
            channels,
        });
    }
    if rows.windows(2).any(|w| w[0].ts >= w[1].ts) {
        return Err(corrupt("timestamps not ascending"));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ts: i64, channels: usize) -> ReadingRow {
        let x = ts as f64 / 7.0;
        ReadingRow {
            ts,
            value: x.sin(),
            expected: f64::NAN,
            lower: -f64::INFINITY,
            upper: x * 1e300,
            score: 1.0 - 1e-17 * x,
            anomaly: ts % 3 == 0,
            channels: (channels > 0).then(|| ChannelValues {
                values: (0..channels).map(|j| x + j as f64).collect(),
                expected: (0..channels).map(|j| x * j as f64).collect(),
                lower: (0..channels).map(|j| -x - j as f64).collect(),
                upper: (0..channels).map(|j| x / (j + 1) as f64).collect(),
            }),
        }
    }

    fn bits(r: &ReadingRow) -> Vec<u64> {
        let mut out = vec![r.ts as u64, r.value.to_bits(), r.expected.to_bits(), r.lower.to_bits()];
        out.extend([r.upper.to_bits(), r.score.to_bits(), u64::from(r.anomaly)]);
        if let Some(ch) = &r.channels {
            out.extend(
                [&ch.values, &ch.expected, &ch.lower, &ch.upper].iter().flat_map(|v| v.iter().map(|x| x.to_bits())),
            );
        }
        out
    }

    #[test]
    fn a_block_gives_back_every_bit_of_its_readings() {
        for channels in [0, 1, 3] {
            let rows: Vec<ReadingRow> = (-5..995).map(|t| row(t * 1000, channels)).collect();
            let data = encode(&rows).expect("uniform rows encode");
            assert_eq!(data.len(), HEADER + rows.len() * (49 + 32 * channels));
            let back = decode(&data).expect("decodes");
            assert_eq!(back.iter().map(bits).collect::<Vec<_>>(), rows.iter().map(bits).collect::<Vec<_>>());
        }
    }

    #[test]
    fn rows_of_mixed_channel_shapes_are_not_packed() {
        assert!(encode(&[]).is_none());
        assert!(encode(&[row(1, 0), row(2, 2)]).is_none());
        assert!(encode(&[row(1, 2), row(2, 3)]).is_none());
        let mut ragged = row(2, 2);
        ragged.channels.as_mut().expect("channels").lower.pop();
        assert!(encode(&[row(1, 2), ragged]).is_none());
    }

    #[test]
    fn a_damaged_block_is_corrupt_not_a_panic() {
        let data = encode(&[row(1, 2), row(2, 2), row(3, 2)]).expect("encodes");
        for cut in 0..data.len() {
            assert!(matches!(decode(&data[..cut]), Err(StorageError::Corrupt(_))), "cut at {cut}");
        }
        let mut longer = data.clone();
        longer.push(0);
        assert!(matches!(decode(&longer), Err(StorageError::Corrupt(_))));
        let mut version = data.clone();
        version[0] = 2;
        assert!(matches!(decode(&version), Err(StorageError::Corrupt(_))));
        let mut huge = data.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        huge[5..9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&huge), Err(StorageError::Corrupt(_))));
        let mut anomaly = data.clone();
        anomaly[HEADER + 6 * 3 * 8] = 7;
        assert!(matches!(decode(&anomaly), Err(StorageError::Corrupt(_))));
        let mut order = data;
        order[HEADER..HEADER + 8].copy_from_slice(&5i64.to_le_bytes());
        assert!(matches!(decode(&order), Err(StorageError::Corrupt(_))));
    }
}
