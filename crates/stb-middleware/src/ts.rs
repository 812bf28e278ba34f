//! The receiver's view of a stream: RTP headers and sequence numbers (RFC 3550), MPEG-TS
//! packets (ISO/IEC 13818-1: sync bytes, continuity counters, PAT/PMT, random access points).
//! Pure functions and small state machines, fed one datagram at a time; no I/O.

/// Length of an MPEG-TS packet.
pub const TS_LEN: usize = 188;
const SYNC: u8 = 0x47;
const NULL_PID: u16 = 0x1fff;
/// RFC 3550 A.1: a forward jump of at least this many sequence numbers is a restart.
const MAX_DROPOUT: u16 = 3000;
/// RFC 3550 A.1: a packet up to this many numbers behind the highest is late, not a restart.
const MAX_MISORDER: u16 = 100;

/// The fields of an RTP header the receiver uses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RtpHeader {
    pub seq: u16,
    pub payload_type: u8,
    pub ssrc: u32,
}

/// Splits an RTP packet (RFC 3550 5.1) into its header and payload: version 2, CSRC list,
/// header extension and padding are honoured. `None` when it is not a valid RTP packet.
pub fn parse_rtp(d: &[u8]) -> Option<(RtpHeader, &[u8])> {
    if d.len() < 12 || d[0] >> 6 != 2 {
        return None;
    }
    let mut off = 12 + 4 * usize::from(d[0] & 0x0f);
    if d[0] & 0x10 != 0 {
        let ext = d.get(off..off + 4)?;
        off += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    let mut end = d.len();
    if d[0] & 0x20 != 0 {
        let pad = usize::from(d[end - 1]);
        if pad == 0 || off + pad > end {
            return None;
        }
        end -= pad;
    }
    if off > end {
        return None;
    }
    let h = RtpHeader {
        seq: u16::from_be_bytes([d[2], d[3]]),
        payload_type: d[1] & 0x7f,
        ssrc: u32::from_be_bytes([d[8], d[9], d[10], d[11]]),
    };
    Some((h, &d[off..end]))
}

/// What one RTP packet changed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RtpStep {
    /// Growth of the number of packets expected (RFC 3550 A.3: highest extended sequence
    /// number received − first + 1).
    pub expected: u64,
    /// The packet came after a later one (late or duplicate).
    pub out_of_sequence: bool,
    /// The packet came after a gap: the start of a loss event.
    pub loss_event: bool,
    /// The sequence jumped so far that counting restarted (a new sender, RFC 3550 A.1).
    pub restart: bool,
}

/// Sequence-number state of one RTP source (RFC 3550 A.1, without the probation of new
/// sources: the first packet is believed).
#[derive(Clone, Debug, Default)]
pub struct RtpTracker {
    started: bool,
    max_seq: u16,
    ssrc: u32,
}

impl RtpTracker {
    pub fn packet(&mut self, h: &RtpHeader) -> RtpStep {
        if !self.started || h.ssrc != self.ssrc {
            let restart = self.started;
            *self = RtpTracker {
                started: true,
                max_seq: h.seq,
                ssrc: h.ssrc,
            };
            return RtpStep {
                expected: 1,
                restart,
                ..RtpStep::default()
            };
        }
        let delta = h.seq.wrapping_sub(self.max_seq);
        if delta == 0 {
            RtpStep {
                out_of_sequence: true,
                ..RtpStep::default()
            }
        } else if delta < MAX_DROPOUT {
            self.max_seq = h.seq;
            RtpStep {
                expected: u64::from(delta),
                loss_event: delta > 1,
                ..RtpStep::default()
            }
        } else if delta > u16::MAX - MAX_MISORDER {
            RtpStep {
                out_of_sequence: true,
                ..RtpStep::default()
            }
        } else {
            self.max_seq = h.seq;
            RtpStep {
                expected: 1,
                restart: true,
                ..RtpStep::default()
            }
        }
    }
}

/// The role of an elementary stream, from its PMT stream_type (and descriptors for 0x06).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EsKind {
    Video,
    Audio,
    Other,
}

/// Classifies a PMT entry. `descriptors` are the ES_info bytes (for private data, 0x06,
/// which carries AC-3/E-AC-3 when a 0x6a/0x7a descriptor says so).
pub fn es_kind(stream_type: u8, descriptors: &[u8]) -> EsKind {
    match stream_type {
        0x01 | 0x02 | 0x10 | 0x1b | 0x24 | 0xea => EsKind::Video,
        0x03 | 0x04 | 0x0f | 0x11 | 0x81 | 0x87 => EsKind::Audio,
        0x06 if descriptor_tags(descriptors).any(|t| t == 0x6a || t == 0x7a) => EsKind::Audio,
        _ => EsKind::Other,
    }
}

fn descriptor_tags(mut d: &[u8]) -> impl Iterator<Item = u8> + '_ {
    std::iter::from_fn(move || {
        if d.len() < 2 {
            return None;
        }
        let (tag, len) = (d[0], usize::from(d[1]));
        d = d.get(2 + len..).unwrap_or(&[]);
        Some(tag)
    })
}

/// TR-135 `Capabilities.VideoDecoder.VideoStandards` value of a video stream_type.
pub fn video_standard(stream_type: u8) -> &'static str {
    match stream_type {
        0x01 | 0x02 => "MPEG2-Part2",
        0x10 => "MPEG4-Part2",
        0x1b => "MPEG4-Part10",
        0xea => "SMPTE-VC-1",
        _ => "",
    }
}

/// TR-135 `AudioStandards` value of an audio stream_type (the decoder may refine it).
pub fn audio_standard(stream_type: u8) -> &'static str {
    match stream_type {
        0x03 | 0x04 => "MPEG1-Part3-Layer2",
        0x0f => "MPEG4-AAC-LC",
        0x81 | 0x06 => "DOLBY-AC3",
        0x87 => "DOLBY-DD+",
        _ => "",
    }
}

/// MPEG-TS counters of TR-135 `MPEG2TSStats`, cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TsCounts {
    pub packets: u64,
    pub sync_byte_errors: u64,
    pub sync_losses: u64,
    pub discontinuities: u64,
}

/// An elementary stream of the program: PID and stream_type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Es {
    pub pid: u16,
    pub stream_type: u8,
}

/// Transport stream state: sync (TR 101 290 1.1: lost after 2 bad sync bytes in a row,
/// regained after 5 good ones), the last continuity counter of every PID, the program found
/// in PAT/PMT, and whether a random access point of its video has been seen.
pub struct TsAnalyzer {
    /// Last continuity counter per PID; 0xff: none seen yet.
    cc: Vec<u8>,
    /// The last packet of the PID repeated the previous one (one duplicate is allowed).
    dup: Vec<bool>,
    in_sync: bool,
    bad_run: u32,
    good_run: u32,
    pmt_pid: Option<u16>,
    pub video: Option<Es>,
    pub audio: Option<Es>,
    pub random_access: bool,
}

impl Default for TsAnalyzer {
    fn default() -> Self {
        TsAnalyzer {
            cc: vec![0xff; 8192],
            dup: vec![false; 8192],
            in_sync: true,
            bad_run: 0,
            good_run: 0,
            pmt_pid: None,
            video: None,
            audio: None,
            random_access: false,
        }
    }
}

impl TsAnalyzer {
    /// Feeds a datagram payload (whole TS packets; a trailing fragment counts as a packet with
    /// a sync error). Returns true when this payload held the first random access point of the
    /// video stream.
    pub fn feed(&mut self, data: &[u8], c: &mut TsCounts) -> bool {
        let mut first_rap = false;
        for p in data.chunks(TS_LEN) {
            c.packets += 1;
            if p.len() < TS_LEN || p[0] != SYNC {
                c.sync_byte_errors += 1;
                self.good_run = 0;
                self.bad_run += 1;
                if self.in_sync && self.bad_run >= 2 {
                    self.in_sync = false;
                    c.sync_losses += 1;
                }
                continue;
            }
            self.bad_run = 0;
            self.good_run += 1;
            if !self.in_sync && self.good_run >= 5 {
                self.in_sync = true;
            }
            if self.packet(p, c) && !self.random_access {
                self.random_access = true;
                first_rap = true;
            }
        }
        first_rap
    }

    /// One packet with a good sync byte; true when it is a random access point of the video.
    fn packet(&mut self, p: &[u8], c: &mut TsCounts) -> bool {
        if p[1] & 0x80 != 0 {
            return false; // transport_error_indicator: the content is not to be trusted
        }
        let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
        let pusi = p[1] & 0x40 != 0;
        let afc = (p[3] >> 4) & 3;
        let cc = p[3] & 0x0f;
        let (af, payload) = match afc {
            1 => (&[][..], &p[4..]),
            2 => (&p[4..], &[][..]),
            3 => {
                let len = usize::from(p[4]).min(TS_LEN - 5);
                (&p[5..5 + len], &p[5 + len..])
            }
            _ => return false,
        };
        let (discontinuity, rai) = match af.first() {
            Some(f) => (f & 0x80 != 0, f & 0x40 != 0),
            None => (false, false),
        };
        if pid != NULL_PID && afc & 1 != 0 {
            let i = usize::from(pid);
            let last = self.cc[i];
            if last != 0xff && !discontinuity {
                if cc == last && !self.dup[i] {
                    self.dup[i] = true;
                    return false; // a permitted duplicate: not decoded again
                } else if cc != (last + 1) & 0x0f {
                    c.discontinuities += 1;
                }
            }
            self.dup[i] = false;
            self.cc[i] = cc;
        }
        if pusi && pid == 0 {
            self.parse_pat(payload);
        } else if pusi && Some(pid) == self.pmt_pid {
            self.parse_pmt(payload);
        }
        match self.video {
            Some(v) if v.pid == pid && pusi => rai || keyframe_start(v.stream_type, payload),
            _ => false,
        }
    }

    /// The section starting in this payload (pointer_field honoured), if it fits.
    fn section(payload: &[u8], table_id: u8) -> Option<&[u8]> {
        let ptr = usize::from(*payload.first()?);
        let s = payload.get(1 + ptr..)?;
        if s.len() < 3 || s[0] != table_id {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([s[1], s[2]]) & 0x0fff);
        // header (8 bytes after the length) .. CRC (4 bytes) excluded
        if len < 9 {
            return None;
        }
        s.get(8..3 + len - 4)
    }

    fn parse_pat(&mut self, payload: &[u8]) {
        let Some(body) = Self::section(payload, 0x00) else {
            return;
        };
        for e in body.chunks_exact(4) {
            let program = u16::from_be_bytes([e[0], e[1]]);
            if program != 0 {
                let pid = u16::from_be_bytes([e[2], e[3]]) & 0x1fff;
                if self.pmt_pid != Some(pid) {
                    self.pmt_pid = Some(pid);
                    self.video = None;
                    self.audio = None;
                }
                return;
            }
        }
    }

    fn parse_pmt(&mut self, payload: &[u8]) {
        let Some(body) = Self::section(payload, 0x02) else {
            return;
        };
        if body.len() < 4 {
            return;
        }
        let info_len = usize::from(u16::from_be_bytes([body[2], body[3]]) & 0x0fff);
        let mut es = body.get(4 + info_len..).unwrap_or(&[]);
        let (mut video, mut audio) = (None, None);
        while es.len() >= 5 {
            let stream_type = es[0];
            let pid = u16::from_be_bytes([es[1], es[2]]) & 0x1fff;
            let n = usize::from(u16::from_be_bytes([es[3], es[4]]) & 0x0fff);
            let desc = es.get(5..5 + n).unwrap_or(&[]);
            let e = Es { pid, stream_type };
            match es_kind(stream_type, desc) {
                EsKind::Video if video.is_none() => video = Some(e),
                EsKind::Audio if audio.is_none() => audio = Some(e),
                _ => {}
            }
            es = es.get(5 + n..).unwrap_or(&[]);
        }
        if self.video.map(|v| v.pid) != video.map(|v| v.pid) {
            self.random_access = false;
        }
        self.video = video;
        self.audio = audio;
    }
}

/// A PES start carrying a key picture without the random_access_indicator: an MPEG-1/2
/// sequence header, an H.264 IDR or SPS, within the first payload bytes.
fn keyframe_start(stream_type: u8, payload: &[u8]) -> bool {
    let head = &payload[..payload.len().min(TS_LEN)];
    head.windows(4).any(|w| {
        w[..3] == [0, 0, 1]
            && match stream_type {
                0x01 | 0x02 => w[3] == 0xb3,
                0x1b => matches!(w[3] & 0x1f, 5 | 7),
                _ => false,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0x80, 33];
        v.extend(seq.to_be_bytes());
        v.extend(1234u32.to_be_bytes());
        v.extend(ssrc.to_be_bytes());
        v.extend(payload);
        v
    }

    /// A TS packet: pid, continuity counter, payload_unit_start, optional adaptation flags.
    fn ts(pid: u16, cc: u8, pusi: bool, af: Option<u8>, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![
            SYNC,
            ((pid >> 8) as u8) | if pusi { 0x40 } else { 0 },
            pid as u8,
        ];
        match af {
            Some(flags) => {
                p.push(0x30 | cc);
                let room = TS_LEN - 5 - payload.len();
                p.push(room as u8);
                if room > 0 {
                    p.push(flags);
                    p.extend(std::iter::repeat_n(0xff, room - 1));
                }
            }
            None => {
                p.push(0x10 | cc);
            }
        }
        p.extend(payload);
        p.resize(TS_LEN, 0xff);
        p
    }

    fn section(table_id: u8, body: &[u8]) -> Vec<u8> {
        let len = (5 + body.len() + 4) as u16;
        let mut s = vec![
            0,
            table_id,
            0xb0 | (len >> 8) as u8,
            len as u8,
            0,
            1,
            0xc1,
            0,
            0,
        ];
        s.extend(body);
        s.extend([0, 0, 0, 0]); // CRC, not checked
        s
    }

    fn pat_pmt() -> Vec<u8> {
        let pat = section(0, &[0, 1, 0xf0, 0x00]); // program 1 → PMT PID 0x1000
        let pmt_body = [
            0xe1, 0x00, 0xf0, 0x00, // PCR PID 0x100, no program info
            0x02, 0xe1, 0x00, 0xf0, 0x00, // MPEG-2 video on 0x100
            0x03, 0xe1, 0x01, 0xf0, 0x00, // MPEG audio on 0x101
        ];
        let pmt = section(2, &pmt_body);
        let mut v = ts(0, 0, true, None, &pat);
        v.extend(ts(0x1000, 0, true, None, &pmt));
        v
    }

    #[test]
    fn rtp_headers() {
        let p = rtp(7, 99, &[1, 2, 3]);
        let (h, pl) = parse_rtp(&p).unwrap();
        assert_eq!(
            (h.seq, h.payload_type, h.ssrc, pl),
            (7, 33, 99, &[1u8, 2, 3][..])
        );
        // two CSRCs, an extension of one word, two bytes of padding
        let mut q = vec![0xb2, 33, 0, 9];
        q.extend([0; 8]);
        q.extend([0; 8]);
        q.extend([0xbe, 0xde, 0, 1, 9, 9, 9, 9]);
        q.extend([5, 6, 0, 2]);
        let (h, pl) = parse_rtp(&q).unwrap();
        assert_eq!((h.seq, pl), (9, &[5u8, 6][..]));
        assert_eq!(parse_rtp(&[0x47; 188][..]), None, "TS is not RTP");
        assert_eq!(parse_rtp(&[0x80, 33, 0, 1]), None);
        let mut bad_pad = rtp(1, 1, &[1]);
        bad_pad[0] |= 0x20;
        *bad_pad.last_mut().unwrap() = 200;
        assert_eq!(parse_rtp(&bad_pad), None);
    }

    /// Runs sequence numbers through a tracker: (expected, received, out of seq, loss events).
    fn run_seq(seqs: &[u16]) -> (u64, u64, u64, u64) {
        let mut t = RtpTracker::default();
        let mut c = (0, 0, 0, 0);
        for &s in seqs {
            let st = t.packet(&RtpHeader {
                seq: s,
                payload_type: 33,
                ssrc: 5,
            });
            c.0 += st.expected;
            c.1 += 1;
            c.2 += u64::from(st.out_of_sequence);
            c.3 += u64::from(st.loss_event);
        }
        c
    }

    #[test]
    fn rtp_sequence_counting() {
        assert_eq!(run_seq(&[10, 11, 12, 13]), (4, 4, 0, 0));
        // 12 and 13 lost (one event), 17 lost (another): 10 expected, 7 received
        assert_eq!(run_seq(&[10, 11, 14, 15, 16, 18, 19]), (10, 7, 0, 2));
        // wrap-around is not a loss
        assert_eq!(run_seq(&[65534, 65535, 0, 1]), (4, 4, 0, 0));
        // 12 arrives late: counted as received and out of sequence, so nothing is lost
        assert_eq!(run_seq(&[10, 11, 13, 12, 14]), (5, 5, 1, 1));
        // a duplicate
        assert_eq!(run_seq(&[10, 11, 11, 12]), (3, 4, 1, 0));
        // a jump far ahead restarts the count instead of counting 30000 losses
        assert_eq!(run_seq(&[10, 11, 30000, 30001]), (4, 4, 0, 0));
    }

    #[test]
    fn ts_continuity_and_program() {
        let mut a = TsAnalyzer::default();
        let mut c = TsCounts::default();
        assert!(!a.feed(&pat_pmt(), &mut c));
        assert_eq!(
            a.video,
            Some(Es {
                pid: 0x100,
                stream_type: 2
            })
        );
        assert_eq!(
            a.audio,
            Some(Es {
                pid: 0x101,
                stream_type: 3
            })
        );
        // video without a random access point, then with the indicator
        let mut d = ts(0x100, 0, true, None, &[0, 0, 1, 0xe0]);
        d.extend(ts(0x100, 1, false, None, &[]));
        d.extend(ts(0x101, 0, true, None, &[]));
        assert!(!a.feed(&d, &mut c));
        assert!(a.feed(&ts(0x100, 2, true, Some(0x40), &[0, 0, 1, 0xe0]), &mut c));
        assert!(
            !a.feed(&ts(0x100, 3, true, Some(0x40), &[]), &mut c),
            "only the first"
        );
        assert_eq!(c.discontinuities, 0);
        // cc 3 repeated once: a permitted duplicate; twice: a discontinuity; 5 skipped: one
        a.feed(&ts(0x100, 3, false, None, &[]), &mut c);
        assert_eq!(c.discontinuities, 0);
        a.feed(&ts(0x100, 3, false, None, &[]), &mut c);
        assert_eq!(c.discontinuities, 1);
        a.feed(&ts(0x100, 5, false, None, &[]), &mut c);
        assert_eq!(c.discontinuities, 2);
        // 15 → 0 wraps; the discontinuity_indicator allows a jump; null packets are ignored
        a.feed(&ts(0x101, 15, false, None, &[]), &mut c);
        assert_eq!(c.discontinuities, 3, "0 → 15 on the audio PID");
        a.feed(&ts(0x101, 0, false, None, &[]), &mut c);
        a.feed(&ts(0x101, 9, false, Some(0x80), &[1]), &mut c);
        a.feed(&ts(NULL_PID, 4, false, None, &[]), &mut c);
        a.feed(&ts(NULL_PID, 9, false, None, &[]), &mut c);
        assert_eq!(c.discontinuities, 3);
        assert_eq!(c.packets, 15);
        assert_eq!((c.sync_byte_errors, c.sync_losses), (0, 0));
    }

    #[test]
    fn ts_keyframe_without_indicator() {
        let mut a = TsAnalyzer::default();
        let mut c = TsCounts::default();
        a.feed(&pat_pmt(), &mut c);
        let pes = [
            0, 0, 1, 0xe0, 0, 0, 0x80, 0x80, 5, 0, 0, 0, 0, 0, 0, 0, 1, 0xb3,
        ];
        assert!(a.feed(&ts(0x100, 0, true, None, &pes), &mut c));
        let mut b = TsAnalyzer::default();
        b.feed(&pat_pmt(), &mut c);
        assert!(
            !b.feed(&ts(0x101, 0, true, Some(0x40), &pes), &mut c),
            "audio PID"
        );
        // no PMT yet: no video PID to look at
        let mut n = TsAnalyzer::default();
        assert!(!n.feed(&ts(0x100, 0, true, Some(0x40), &pes), &mut c));
    }

    #[test]
    fn ts_sync_errors_and_losses() {
        let mut a = TsAnalyzer::default();
        let mut c = TsCounts::default();
        let good = ts(0x200, 0, false, None, &[]);
        let mut bad = good.clone();
        bad[0] = 0x48;
        // one bad packet: an error, not a loss of sync
        a.feed(&[good.clone(), bad.clone()].concat(), &mut c);
        assert_eq!((c.sync_byte_errors, c.sync_losses), (1, 0));
        // two in a row: sync lost once; more bad ones do not count again
        a.feed(&[bad.clone(), bad.clone(), bad.clone()].concat(), &mut c);
        assert_eq!((c.sync_byte_errors, c.sync_losses), (4, 1));
        // four good ones are not enough to regain sync, five are
        let mut cc = 1;
        for _ in 0..4 {
            a.feed(&ts(0x200, cc, false, None, &[]), &mut c);
            cc += 1;
        }
        a.feed(&[bad.clone(), bad.clone()].concat(), &mut c);
        assert_eq!(c.sync_losses, 1, "still out of sync");
        for _ in 0..5 {
            a.feed(&ts(0x200, cc, false, None, &[]), &mut c);
            cc += 1;
        }
        a.feed(&[bad.clone(), bad].concat(), &mut c);
        assert_eq!(c.sync_losses, 2);
        // a fragment at the end of a datagram counts as a bad packet
        let before = c.sync_byte_errors;
        a.feed(&good[..100], &mut c);
        assert_eq!(c.sync_byte_errors, before + 1);
    }

    #[test]
    fn stream_types() {
        assert_eq!(es_kind(0x1b, &[]), EsKind::Video);
        assert_eq!(es_kind(0x06, &[0x0a, 1, 0, 0x6a, 0]), EsKind::Audio);
        assert_eq!(es_kind(0x06, &[0x59, 0]), EsKind::Other);
        assert_eq!(
            es_kind(0x06, &[0x6a]),
            EsKind::Other,
            "truncated descriptor"
        );
        assert_eq!(video_standard(0x1b), "MPEG4-Part10");
        assert_eq!(audio_standard(0x0f), "MPEG4-AAC-LC");
    }
}
