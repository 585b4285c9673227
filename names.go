// Names that pass for other names (PROTOCOL.md section 7).
//
// A name tells people whom they are talking to, so no two live names may
// look alike. Unicode makes that easy to get wrong: the Cyrillic "а" of
// "аlice" is drawn like a Latin "a", "alice"+U+3164 HANGUL FILLER like
// "alice", and "ＡＬＩＣＥ" (a Japanese keyboard's full width) reads as
// "alice". checkName refuses names that mix scripts or hide characters, by
// the rule Chrome and Firefox apply before showing a domain name in Unicode;
// foldName gives the key under which names are unique. Both use only the
// standard library: the full answer (Unicode's confusables, NFKC) needs
// golang.org/x/text, and the comments say what it would add.
package main

import (
	"fmt"
	"slices"
	"strings"
	"unicode"
)

// checkName refuses a name that could pass for another (PROTOCOL.md section
// 7). Its letters must come from one script, except the mixes people really
// write: Han with Hiragana and Katakana, Han with Hangul or Bopomofo, and
// any of these with Latin (UTS #39's "highly restrictive" level). So
// "аlice" (Cyrillic а) and "Иван李" are refused; "Иван", "山田たろう" and
// "Li 李" are fine. Characters of no script (Unicode's Common and
// Inherited: 0–9, space, '-', '_', '.', combining marks) don't count; the
// digits of a script (٣, ३) count as that script. Characters that pass this
// rule yet hide or disguise a name are refused outright (see refusal).
// Length and the kinds of character allowed are left to validUsername.
func checkName(name string) error {
	var scripts []string
	for _, r := range name {
		if why := refusal(r); why != "" {
			return fmt.Errorf("%U %s", r, why)
		}
		if s := script(r); s != "Common" && s != "Inherited" && s != "" && !slices.Contains(scripts, s) {
			scripts = append(scripts, s)
		}
	}
	if len(scripts) <= 1 {
		return nil
	}
	for _, mix := range mixes {
		if !slices.ContainsFunc(scripts, func(s string) bool { return !slices.Contains(mix, s) }) {
			return nil
		}
	}
	return fmt.Errorf("a name's letters come from one script, not %s", strings.Join(scripts, " and "))
}

// mixes are the sets of scripts one name may combine; any part of one is
// fine too (Latin with Hangul, Hiragana alone).
var mixes = [][]string{
	{"Latin", "Han", "Hiragana", "Katakana"}, // Japanese: 山田たろう, Tanaka太郎
	{"Latin", "Han", "Hangul"},               // Korean: 김민준, Ana 김
	{"Latin", "Han", "Bopomofo"},             // Chinese: Li 李, 王ㄒㄧㄠ
}

// script names the script of r by Unicode's Scripts.txt. (UTS #39 uses
// Script_Extensions, which the standard library lacks; there a few Common
// characters, such as the Arabic tatweel ـ, belong to some scripts only.)
func script(r rune) string {
	for name, table := range unicode.Scripts {
		if unicode.Is(table, r) {
			return name
		}
	}
	return ""
}

// refusal says why r may be in no name, or "" if it may.
func refusal(r rune) string {
	switch {
	// Invisible: default-ignorable characters (zero-width space, joiners,
	// variation selectors) draw nothing, and the Hangul fillers among them
	// (U+115F, U+1160, U+3164, U+FFA0) are letters of the Hangul script, so
	// "alice"+U+3164 passes validUsername and the script rule (Latin with
	// Hangul is Korean). U+2800 BRAILLE PATTERN BLANK is blank too.
	case unicode.In(r, unicode.Other_Default_Ignorable_Code_Point, unicode.Variation_Selector, unicode.Cf), r == 0x2800:
		return "is invisible"
	// Styled: math letters, letterlike symbols (𝖺, ℓ, ℂ, µ) and math digits
	// (𝟎–𝟿) have no script for the rule to see, yet are drawn as Latin or
	// Greek. Modifier letters stay: names hold the Japanese ー, Hawaiian ʻ.
	case unicode.Is(unicode.Common, r) && unicode.IsLetter(r) && !unicode.Is(unicode.Lm, r),
		r >= 0x1D7CE && r <= 0x1D7FF:
		return "is a styled letter"
	// Presentation forms: ligatures (ﬁ) and the shapes Arabic letters take
	// in context are drawn like the ordinary letters a keyboard types.
	case r >= 0xFB00 && r <= 0xFDFF, r >= 0xFE70 && r <= 0xFEFF:
		return "is a presentation form"
	// Conjoining jamo: ᄀ, ᅵ and ᆷ in a row are drawn as the syllable 김,
	// which is also one character, the one a Korean keyboard types.
	case r >= 0x1100 && r <= 0x11FF, r >= 0xA960 && r <= 0xA97F, r >= 0xD7B0 && r <= 0xD7FF:
		return "is a conjoining jamo"
	// Punctuation in disguise: the modifier letters drawn as strokes, lines
	// and dots (ˈ ˉ ˊ ˋ ˌ ˍ ˎ ˏ ː ˑ, U+02C8–U+02D1: "bobˍsmith" is
	// "bob_smith" to the eye), the Arabic tatweel ـ, a line that stretches
	// a word, and the sinological dot ꞏ. They are letters to Unicode, of no
	// script or of Latin, so nothing above sees them.
	case r >= 0x02C8 && r <= 0x02D1, r == 0x0640, r == 0xA78F:
		return "is drawn like punctuation"
	}
	return ""
}

// foldName is the key under which names are unique (PROTOCOL.md section 7):
// no two live names share a key. It ignores case and width, so "Alice",
// "ALICE" and "ＡＬＩＣＥ" are all "alice".
//
// Case: each character becomes the lower case of its upper case, where
// strings.ToLower alone misses letters with two lower cases: σ and final ς
// are both Σ, long ſ is S, Turkish dotless ı is I. So every group that
// unicode.SimpleFold links gets one key (Kelvin sign K is k, ẞ is ß), and
// so do i, I, ı and İ, which SimpleFold keeps apart. Not done: full case
// folding's expansions ("straße" is not "strasse": they look different).
//
// Spaces: a run of them is one, as a page draws it ("alice  cooper" is
// "alice cooper"). Look-alikes a name may hold (drawnAs): the modifier
// letters drawn like an apostrophe (the Hawaiian ʻokina, ʼ, ʽ, ʾ, ʿ, ʹ) are
// one, and the katakana ー is a hyphen ("bobーsmith" is "bob-smith": UTS #39
// lets Latin and katakana mix). Not done: the rest of Unicode's
// confusables, such as 0 and O, or l and I.
//
// Width: full-width ASCII U+FF01–U+FF5E becomes ASCII, U+3000 a space,
// half-width katakana U+FF61–U+FF9F ordinary katakana (ｶﾞ is ガ, as in
// NFKC), half-width Hangul U+FFA1–U+FFDC ordinary jamo (ﾡ is ㄱ). Not done:
// the rest of NFKC (checkName refuses ligatures and math letters instead),
// nor canonical equivalence: "Zoë" with ë and with e+U+0308 get different
// keys, which is safe only while validUsername refuses combining marks.
func foldName(name string) string {
	fold := func(r rune) rune { return unicode.ToLower(unicode.ToUpper(drawnAs(narrow(r)))) }
	key := voiced.Replace(strings.Map(fold, name))
	return strings.Join(strings.Fields(key), " ") // a page draws two spaces as one
}

// drawnAs gives the character a name may hold that r is drawn like, or r.
func drawnAs(r rune) rune {
	switch {
	case r == 0x02B9, r >= 0x02BB && r <= 0x02BF: // ʹ ʻ ʽ ʾ ʿ: an apostrophe, ʼ
		return 0x02BC
	case r == 0x30FC: // the long-vowel mark ー of katakana: a hyphen
		return '-'
	}
	return r
}

// narrow gives the ordinary form of a full-width or half-width r.
func narrow(r rune) rune {
	switch {
	case r == 0x3000: // ideographic space
		return ' '
	case r >= 0xFF01 && r <= 0xFF5E: // ！ to ～
		return r - 0xFF01 + '!'
	case r >= 0xFF61 && r <= 0xFF9F: // ｡ to ﾟ
		return halfKana[r-0xFF61]
	case r >= 0xFFA1 && r <= 0xFFBE: // ﾡ to ﾾ, the consonants
		return r - 0xFFA1 + 0x3131
	case r >= 0xFFC2 && r <= 0xFFDC && r%8 >= 2: // ￂ to ￜ, vowels six to a row of eight
		return 0x314F + (r-0xFFC2)/8*6 + r%8 - 2
	}
	return r
}

// halfKana holds the ordinary forms of U+FF61 to U+FF9F, in order.
var halfKana = []rune("。「」、・ヲァィゥェォャュョッーアイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワン\u3099\u309A")

// voiced joins a katakana and the voicing mark after it into the one
// character a keyboard types: カ and U+3099 (゛) are ガ, ハ and U+309A (゜) パ.
var voiced = strings.NewReplacer(
	"カ\u3099", "ガ", "キ\u3099", "ギ", "ク\u3099", "グ", "ケ\u3099", "ゲ",
	"コ\u3099", "ゴ", "サ\u3099", "ザ", "シ\u3099", "ジ", "ス\u3099", "ズ",
	"セ\u3099", "ゼ", "ソ\u3099", "ゾ", "タ\u3099", "ダ", "チ\u3099", "ヂ",
	"ツ\u3099", "ヅ", "テ\u3099", "デ", "ト\u3099", "ド", "ハ\u3099", "バ",
	"ヒ\u3099", "ビ", "フ\u3099", "ブ", "ヘ\u3099", "ベ", "ホ\u3099", "ボ",
	"ウ\u3099", "ヴ", "ワ\u3099", "ヷ", "ヰ\u3099", "ヸ", "ヱ\u3099", "ヹ",
	"ヲ\u3099", "ヺ", "ヽ\u3099", "ヾ", "ハ\u309A", "パ", "ヒ\u309A", "ピ",
	"フ\u309A", "プ", "ヘ\u309A", "ペ", "ホ\u309A", "ポ",
)
