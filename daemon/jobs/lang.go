package jobs

import (
	"strings"
	"unicode"
)

// LanguageUnknown is the language of a text detectLanguage cannot place.
const LanguageUnknown = "unknown"

// stopwords are frequent function words of each language. A word of
// several lists counts for each, divided among them.
func stopwords() map[string][]string {
	return map[string][]string{
		"en": strings.Fields(`the and is are to of you that it for with have this be on not we will can your
			would please thanks thank i my me at was were from our they if there what about just know let`),
		"nl": strings.Fields(`de het een en van ik je is dat niet met voor op zijn we wij maar ook als bij kunnen
			graag bedankt groet groeten jij u hebben wordt naar nog wel dan heb kan dit die hoe wat`),
		"de": strings.Fields(`der die das und ist nicht ich sie wir mit für auf ein eine zu den dem es auch bitte
			danke sind haben wird gruß grüße ihr uns noch wie was aber oder kann habe vielen gerne`),
		"fr": strings.Fields(`le la les et est je vous nous pas pour avec une un des du que qui dans sur merci
			bonjour cordialement être avoir ce cette au aux mais ou votre vos mon ma suis sont bien`),
		"es": strings.Fields(`el la los las y es que de en un una por para con no se su gracias hola saludos
			estoy está muy pero como del al usted nos mi tu sus este esta hay`),
		"it": strings.Fields(`il lo la gli le e è che di un una per con non sono sei grazie ciao saluti della
			del questo questa anche ma come al nel mi ti si ho hai cordiali buongiorno`),
	}
}

// detectLanguage guesses the language of text from its stopwords: en, nl,
// de, fr, es, it, or LanguageUnknown when too few stopwords are found or
// two languages score too close. It reads at most the first 3,000 words.
func detectLanguage(text string) string {
	lists := stopwords()
	owners := map[string][]string{}
	for lang, words := range lists {
		for _, w := range words {
			owners[w] = append(owners[w], lang)
		}
	}
	scores := map[string]float64{}
	words := strings.FieldsFunc(strings.ToLower(text), func(r rune) bool {
		return !unicode.IsLetter(r) && r != '\''
	})
	if len(words) > 3000 {
		words = words[:3000]
	}
	for _, w := range words {
		langs := owners[w]
		for _, l := range langs {
			scores[l] += 1 / float64(len(langs))
		}
	}
	best, second, bestLang := 0.0, 0.0, ""
	for _, lang := range []string{"en", "nl", "de", "fr", "es", "it"} { // fixed order: deterministic ties
		s := scores[lang]
		switch {
		case s > best:
			second, best, bestLang = best, s, lang
		case s > second:
			second = s
		}
	}
	if best < 2 || best < 1.25*second {
		return LanguageUnknown
	}
	return bestLang
}

// languageName is the English name of a language code, for prompts.
func languageName(code string) string {
	switch code {
	case "en":
		return "English"
	case "nl":
		return "Dutch"
	case "de":
		return "German"
	case "fr":
		return "French"
	case "es":
		return "Spanish"
	case "it":
		return "Italian"
	}
	return code
}
