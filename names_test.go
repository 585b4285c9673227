package main

import (
	"net/http"
	"strings"
	"testing"
	"unicode"
)

func TestCheckNameScripts(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		ok   bool
	}{
		// One script, with characters of no script around it.
		{"alice", true},
		{"Иван", true},
		{"Αλέξης", true},
		{"José", true},
		{"Zoë", true},              // precomposed ë: Latin
		{"Zoe\u0308", true},        // e + combining diaeresis: the mark is Inherited
		{"guest-0001", true},       // digits and '-' are Common
		{"ＡＬＩＣＥ", true},            // full-width letters are Latin (foldName makes them alice)
		{"Hawaiʻi", true},          // the ʻokina is a modifier letter of no script
		{"علي٣", true},             // Arabic-Indic digits count as Arabic
		{"ルーシー", true},             // ー is Common
		{"ｱﾘｽ", true},              // half-width katakana is Katakana
		{"guest-0001\u3000", true}, // the ideographic space is Common

		// The mixes people write.
		{"山田たろう", true},     // Han, Hiragana (Japanese)
		{"Tanaka太郎カ", true}, // Latin, Han, Katakana
		{"Li 李", true},      // Latin, Han
		{"김민준", true},       // Hangul
		{"Ana 김", true},     // Latin, Hangul (Korean without Han)
		{"王ㄒㄧㄠ", true},      // Han, Bopomofo (Chinese)

		// Mixes that make look-alikes.
		{"аlice", false},  // Cyrillic а among Latin
		{"Αlice", false},  // Greek Α among Latin
		{"Иван李", false},  // Cyrillic with Han
		{"alice٣", false}, // an Arabic digit in a Latin name
		{"김たろう", false},   // Hangul with Hiragana: two of the mixes, not one
		{"ㄅたろう", false},   // Bopomofo with Hiragana
		{"ㄅ김", false},     // Bopomofo with Hangul

		// Refused whatever the scripts.
		{"alice\u3164", false}, // HANGUL FILLER, a Hangul letter drawn as nothing
		{"\u3164", false},
		{"alice\u115F", false},        // HANGUL CHOSEONG FILLER
		{"alice\u1160", false},        // HANGUL JUNGSEONG FILLER
		{"alice\uFFA0", false},        // HALFWIDTH HANGUL FILLER
		{"alice\u2800", false},        // BRAILLE PATTERN BLANK
		{"ali\u200Bce", false},        // ZERO WIDTH SPACE
		{"alice\uFE0F", false},        // a variation selector
		{"𝖺lice", false},              // MATHEMATICAL SANS-SERIF SMALL A
		{"ℓisa", false},               // SCRIPT SMALL L
		{"guest-𝟎001", false},         // MATHEMATICAL BOLD DIGIT ZERO
		{"ﬁona", false},               // the fi ligature
		{"\u1100\u1175\u11B7", false}, // 김 spelled in conjoining jamo
		{"bobˍsmith", false},          // MODIFIER LETTER LOW MACRON, drawn as _
		{"bobˉsmith", false},          // MODIFIER LETTER MACRON
		{"bobˈsmith", false},          // MODIFIER LETTER VERTICAL LINE
		{"bobـsmith", false},          // ARABIC TATWEEL
		{"bobˑsmith", false},          // MODIFIER LETTER HALF TRIANGULAR COLON, drawn as .
		{"bobꞏsmith", false},          // LATIN LETTER SINOLOGICAL DOT
		{"عـلي", false},               // tatweel in an Arabic name too
		{"Oʼneill", true},             // MODIFIER LETTER APOSTROPHE stays (foldName makes ʻ the same)
	} {
		if err := checkName(c.name); (err == nil) != c.ok {
			t.Errorf("checkName(%q) = %v, want ok %v", c.name, err, c.ok)
		}
	}
}

func TestFoldName(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ name, want string }{
		{"alice", "alice"},
		{"ALICE", "alice"},
		{"ＡＬＩＣＥ", "alice"}, // full width
		{"ａｌｉｃｅ", "alice"},
		{"！～", "!~"}, // the ends of full-width ASCII, U+FF01 and U+FF5E
		{"guest-０００１", "guest-0001"},
		{"Li\u3000李", "li 李"}, // the ideographic space
		{"ｱﾘｽ", "アリス"},        // half-width katakana
		{"｡ﾟ", "。\u309A"},     // the ends of half-width katakana, U+FF61 and U+FF9F
		{"ｶﾞｸ", "ガク"},         // a voicing mark joins its kana
		{"ﾊﾟﾝ", "パン"},
		{"カ\u3099", "ガ"},         // also when typed in full width
		{"ﾡﾾￂￜ", "ㄱㅎㅏㅣ"},         // the ends of half-width Hangul's consonants and vowels
		{"ΟΔΥΣΣΕΥΣ", "οδυσσευσ"}, // Σ, σ and final ς are one letter
		{"οδυσσευς", "οδυσσευσ"},
		{"Straße", "straße"}, // ß is not ss,
		{"STRASSE", "strasse"},
		{"ẞ", "ß"},          // but capital ẞ is ß
		{"\u212Aim", "kim"}, // KELVIN SIGN
		{"İrem", "irem"},    // Turkish dotted İ,
		{"Irem", "irem"},
		{"ılgın", "ilgin"}, // and dotless ı
		{"ſara", "sara"},   // long s
		{"Иван", "иван"},
		{"김민준", "김민준"},
		{"alice  cooper", "alice cooper"}, // a run of spaces is one
		{"a   b    c", "a b c"},
		{"bobーsmith", "bob-smith"}, // the katakana long-vowel mark is a hyphen,
		{"bobｰsmith", "bob-smith"}, // in half width too
		{"ルーシー", "ル-シ-"},
		{"Hawaiʻi", "hawaiʼi"}, // ʻ ʼ ʽ are one apostrophe
		{"Hawaiʽi", "hawaiʼi"},
		{"Hawaiʼi", "hawaiʼi"},
		{"Zoë", "zoë"},             // precomposed and decomposed ë are not folded together:
		{"Zoe\u0308", "zoe\u0308"}, // that needs NFC, so validUsername refuses the mark
	} {
		if got := foldName(c.name); got != c.want {
			t.Errorf("foldName(%q) = %q, want %q", c.name, got, c.want)
		}
	}
}

// TestFoldNameIsAKey checks every letter and digit: a key folds to itself
// (so a key can be looked up by folding it again), and whatever
// unicode.SimpleFold calls the same letter gets the same key.
func TestFoldNameIsAKey(t *testing.T) {
	t.Parallel()
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if !unicode.IsLetter(r) && !unicode.IsDigit(r) {
			continue
		}
		key := foldName(string(r))
		if again := foldName(key); again != key {
			t.Errorf("foldName(%q) = %q, but foldName(%q) = %q", r, key, key, again)
		}
		if other := foldName(string(unicode.SimpleFold(r))); other != key {
			t.Errorf("foldName(%q) = %q, want %q like foldName(%q)", unicode.SimpleFold(r), other, key, r)
		}
	}
}

// TestNameLookAlikes: while alice is online, nobody else can take a name
// that passes for hers, over a WebSocket, over the form or as a new
// session; names in one script are still fine (PROTOCOL.md section 7).
func TestNameLookAlikes(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	joined(t, ts, "alice")
	joined(t, ts, "alice  cooper")
	joined(t, ts, "alice-cooper")
	bob := joined(t, ts, "bob")
	lookAlikes := []struct{ name, code string }{
		{"аlice", "invalid_username"},       // Cyrillic а
		{"alice\u3164", "invalid_username"}, // HANGUL FILLER, drawn as nothing
		{"ＡＬＩＣＥ", "username_taken"},         // full width: alice
		{"ａｌｉｃｅ", "username_taken"},
		{"alice cooper", "username_taken"}, // one space where there are two: drawn alike
		{"alice   cooper", "username_taken"},
		{"aliceˍcooper", "invalid_username"}, // drawn as alice_cooper
		{"aliceーcooper", "username_taken"},   // drawn as alice-cooper
	}
	for _, c := range lookAlikes {
		if a := postMessage(t, ts, c.name, "hi", nil); a.status != http.StatusBadRequest {
			t.Errorf("POST /send_message as %q: got %d, want 400", c.name, a.status)
		}
	}
	if guest := dial(t, ts, "ＡＬＩＣＥ"); !strings.HasPrefix(guest.username, "guest-") {
		t.Errorf("a new session asking for ＡＬＩＣＥ: got %q, want a guest name", guest.username)
	}
	for _, c := range lookAlikes {
		if r := bob.call("set_username", map[string]any{"username": c.name}); r.Error.Code != c.code {
			t.Errorf("set_username %q: got %s, want %s", c.name, r.raw, c.code)
		}
	}
	if got := storedTexts(t, ts); len(got) != 0 {
		t.Errorf("GET /messages: got %q, want nothing stored", got)
	}
	for _, name := range []string{"Иван", "山田たろう", "Li 李"} {
		if r := bob.call("set_username", map[string]any{"username": name}); !r.OK {
			t.Errorf("set_username %q: got %s, want ok", name, r.raw)
		}
	}
}

// TestRenamedNameIsFolded: a name taken by set_username is held by its
// folded form too: once bob is ＣＡＲＯＬ (full width), nobody may be carol.
func TestRenamedNameIsFolded(t *testing.T) {
	t.Parallel()
	_, ts := startServer(t, nil)
	bob := joined(t, ts, "bob")
	if r := bob.call("set_username", map[string]any{"username": "ＣＡＲＯＬ"}); !r.OK {
		t.Fatalf("set_username ＣＡＲＯＬ: got %s, want ok", r.raw)
	}
	dave := joined(t, ts, "dave")
	if r := dave.call("set_username", map[string]any{"username": "carol"}); r.Error.Code != "username_taken" {
		t.Errorf("set_username carol while ＣＡＲＯＬ is online: got %s, want username_taken", r.raw)
	}
	if guest := dial(t, ts, "Carol"); !strings.HasPrefix(guest.username, "guest-") {
		t.Errorf("a new session asking for Carol: got %q, want a guest name", guest.username)
	}
}
