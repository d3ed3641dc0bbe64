"""Tests for thinktree.extraction: answers read from realistic model outputs."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from thinktree.extraction import Extraction, canonical_number, extract_answer
from thinktree.grading import grade
from thinktree.problems import AnswerType, Problem

MEDQA = Problem(
    id="medqa-test-00786",
    question="Which of the following factors is most likely defective in this patient?",
    answer_type=AnswerType.CHOICE,
    options={"A": "Factor VII", "B": "Factor VIII", "C": "Factor IX", "D": "Factor XII"},
    answer="D",
)
MEDMCQA = Problem(
    id="medmcqa-98200364",
    question="The patients with class II division 1 malocclusion have",
    answer_type=AnswerType.CHOICE,
    options={
        "A": "Hypertonic Lower Lip",
        "B": "Hypotonic Lower lip",
        "C": "Hypertonic upper Lip",
        "D": "Hypotonic upper lip",
    },
    answer="D",
)
MEDBULLETS = Problem(
    id="medbullets_op5-193",
    question="Which of the following is the most accurate test to diagnose this condition?",
    answer_type=AnswerType.CHOICE,
    options={
        "A": "Contrast enema",
        "B": "Genetic testing",
        "C": "Intraoperative cholangiogram",
        "D": "Rectal suction biopsy",
        "E": "Upper gastrointestinal series",
    },
    answer="D",
)
MEDXPERT = Problem(
    id="medxpertqa_text-Text-1402",
    question="What is the most appropriate next step in management?",
    answer_type=AnswerType.CHOICE,
    options={
        "A": "Acetaminophen for symptomatic relief",
        "B": "Methadone",
        "C": "Referral to pain management",
        "D": "Tapering of oxycodone",
        "E": "Initiation of antibiotics",
        "F": "Supportive therapy",
        "G": "Naloxone administration",
        "H": "Oseltamivir",
        "I": "Intravenous fluids for dehydration",
        "J": "Buprenorphine-naloxone",
    },
    answer="B",
)
PUBMEDQA = Problem(
    id="pubmedqa-7664228",
    question="Discharging patients earlier from hospital: does it affect quality of care?",
    answer_type=AnswerType.YESNO,
    answer="no",
)
MEDCALC = Problem(
    id="medcalc_bench-468",
    question="What is the patient's free water deficit in terms of liters?",
    answer_type=AnswerType.NUMERIC,
    answer="-1.39",
    lower_limit=-1.4595,
    upper_limit=-1.3205,
)
FREE = Problem(
    id="free-1", question="Name the most likely diagnosis.", answer="Hirschsprung disease"
)

INFECTION = Problem(  # real options of the kind MedXpertQA and MedQA carry
    id="infection-1",
    question="Which organism most likely caused this patient's diarrhea?",
    answer_type=AnswerType.CHOICE,
    options={
        "A": "Crohn’s disease",
        "B": "*E. coli* O157:H7",
        "C": "C. difficile colitis",
        "D": "Ménière disease",
        "E": "Entamoeba histolytica",
    },
    answer="B",
)

ANTIPLATELET = Problem(  # one option's text starts another's, as in many real sets
    id="antiplatelet-1",
    question="Which regimen is most appropriate after this patient's stent placement?",
    answer_type=AnswerType.CHOICE,
    options={"A": "Aspirin", "B": "Aspirin and clopidogrel", "C": "Warfarin", "D": "Heparin"},
    answer="B",
)

PROBLEMS = {
    "antiplatelet": ANTIPLATELET,
    "infection": INFECTION,
    "medqa": MEDQA,
    "medmcqa": MEDMCQA,
    "medbullets": MEDBULLETS,
    "medxpert": MEDXPERT,
    "pubmedqa": PUBMEDQA,
    "medcalc": MEDCALC,
    "free": FREE,
}

# (problem, model output, expected answer or None, expected method or None)
CASES: list[tuple[str, str, str | None, str | None]] = [
    # --- a letter and another option's text: two answers, and which it means it does not say
    ("medqa", "The PTT is prolonged.\n\nThe correct answer is A. Factor XII.", None, None),
    ("medqa", "Answer: A. Factor VIII", None, None),  # A is Factor VII: VIII is B's
    ("medqa", "Answer: (C) Factor VII", None, None),
    ("medqa", "Answer: A. Factor VII deficiency", "A", "answer-label"),  # its own, and more
    ("medqa", "Answer: B, Factor VIII", "B", "answer-label"),
    ("medmcqa", "Class II division 1 has a short lip.\nD. Hypertonic Lower Lip", None, None),
    ("medbullets", "The most accurate test:\nD. Rectal suction biopsy", "D", "bare-letter"),
    ("antiplatelet", "Answer: B. Aspirin plus clopidogrel", "B", "answer-label"),  # B, reworded
    ("antiplatelet", "Answer: C. Aspirin", None, None),
    ("antiplatelet", "Answer: A. Aspirin and clopidogrel", "A", "answer-label"),  # starts its own
    # --- multiple choice, 4 options (MedQA) ---
    (
        "medqa",
        "The prolonged PTT with a normal PT and bleeding time, together with decreased "
        "bradykinin formation and no clinical bleeding, points to Hageman factor deficiency.\n\n"
        "Therefore, the answer is D.",
        "D",
        "answer-is",
    ),
    (
        "medqa",
        "Factor XII deficiency prolongs the PTT in vitro but does not cause bleeding.\n\n"
        "**Final Answer:** (D) Factor XII",
        "D",
        "final-answer",
    ),
    (
        "medqa",
        "Decreased bradykinin formation implicates the contact pathway. $\\boxed{D}$",
        "D",
        "boxed",
    ),
    (
        "medqa",
        "Hemophilia A and B would cause hemarthrosis, but the bleeding time and history "
        "suggest an isolated PTT abnormality.\n\nAnswer: D",
        "D",
        "answer-label",
    ),
    ("medqa", "The correct answer is (C).", "C", "answer-is"),
    (
        "medqa",
        "I think the answer is C.\nWait, actually the answer is D.",
        "D",
        "answer-is",
    ),
    ("medqa", "The answer is not A, it is B.", "B", "answer-is"),
    # a letter set off by commas after a qualified "answer" (read before an option's text
    # later in the sentence, which once read another option's letter)
    (
        "medqa",
        "Hemophilia is ruled out, so the correct answer, D, Factor XII, fits the labs.",
        "D",
        "answer-is",
    ),
    (
        "medqa",
        "The most likely answer, B, is wrong; the correct answer, (D), is right.",
        "D",
        "answer-is",
    ),
    ("medqa", "The final answer, C, stands.", "C", "final-answer"),
    ("medqa", "So the answer, A, is tempting.", None, None),  # no qualifier: no answer said
    (
        "medqa",
        "The contact pathway factor is the one that is defective here.\n\nD",
        "D",
        "bare-letter",
    ),
    (
        "medqa",
        "Only one factor affects bradykinin generation.\n(D) Factor XII",
        "D",
        "bare-letter",
    ),
    (
        "medqa",
        "Bradykinin is generated from HMWK by kallikrein, which requires activation by "
        "Hageman factor.\nThe defective factor is Factor XII.",
        "D",
        "option-text",
    ),
    ("medqa", "Final answer: Factor XII", "D", "final-answer"),
    # the letter before its phrase: "option D is the correct answer"
    (
        "medqa",
        "Factor IX is wrong here, which is why option D is the correct answer.",
        "D",
        "correct-option",
    ),
    (
        "medqa",
        "The answer is C.\nOn reflection, option D is the right answer.",
        "D",
        "correct-option",
    ),
    ("medxpert", "Methadone fits best, so choice B is the best one.", "B", "correct-option"),
    ("medqa", "Only the contact pathway fits. Option D is correct.", "D", "bare-letter"),
    ("medqa", "Option D is correct for the PTT, not the bleeding.", None, None),
    # "option B is correct" said in passing, as a condition, or taken back: no answer; the
    # one that follows stands
    (
        "medqa",
        "At first I thought option B was correct, but low bradykinin points to the contact "
        "pathway.\n\nD",
        "D",
        "bare-letter",
    ),
    (
        "medqa",
        "If option B is correct, he would bleed. He does not.\nFactor XII",
        "D",
        "option-text",
    ),
    ("medqa", "Hmm, option B is correct. Wait, no.\n\n**D. Factor XII**", "D", "bare-letter"),
    ("medqa", "Option B is correct, as is option D.", None, None),
    (
        "medqa",
        "B is the correct answer for hemophilia A, but here low bradykinin fits Factor XII.",
        "D",
        "option-text",
    ),
    # "I was right" is the writer, not option I; "Option D:" heads a line of its own
    (
        "medqa",
        "Factor XII deficiency explains the low bradykinin. So I was right.",
        "D",
        "option-text",
    ),
    (
        "medxpert",
        "It is treated with an opioid agonist: Methadone. I was right.",
        "B",
        "option-text",
    ),
    (
        "medbullets",
        "**Option C:**\nFluconazole is for candida.\n\n**Option D:**\nIt is for BV.",
        None,
        None,
    ),
    # a last line that names its letter first, or a lone letter after "Therefore,"
    ("medqa", "Only the contact pathway fits.\nD is the correct answer.", "D", "bare-letter"),
    ("medqa", "Hemophilia is ruled out. So, (D) is the right one", "D", "bare-letter"),
    ("medqa", "Hemophilia is ruled out.\nTherefore, D.", "D", "bare-letter"),
    ("medqa", "Hemophilia is ruled out.\nE is the correct answer.", None, None),
    # the option named as the answer's: "answer option D is correct"
    (
        "medqa",
        "The PTT alone is long.\nSo, answer option D is the most likely deficiency.",
        "D",
        "bare-letter",
    ),
    ("medqa", "Bradykinin is low. Therefore, answer option D is correct.", "D", "bare-letter"),
    ("medqa", "If the answer option B is correct, he would bleed.", None, None),
    ("medqa", "Answer option E is correct.", None, None),  # no such option
    # two items on their lines, the last saying it is right: that one
    (
        "medqa",
        "C. Factor IX is in hemophilia B.\n\nD. Factor XII is the correct answer.",
        "D",
        "bare-letter",
    ),
    ("medqa", "(C) Factor IX\n(D) Factor XII was the right one!", "D", "bare-letter"),
    ("medqa", "C. Factor IX\nD. Factor XII is the correct answer, not C.", None, None),
    ("medqa", "C. Factor IX\nD. Factor VII is the correct answer.", None, None),  # A's text
    ("medqa", "C. Factor IX\nD. Factor XII", None, None),
    # an option named alone on a line: with a full stop, or after "Therefore,"
    ("medqa", "The PTT alone is long.\nOption D.", "D", "bare-letter"),
    ("medqa", "The PTT alone is long.\n**Option D.**", "D", "bare-letter"),
    ("medqa", "The PTT alone is long.\nTherefore, option D.", "D", "bare-letter"),
    ("medqa", "The PTT alone is long.\nThus, choice D", "D", "bare-letter"),
    (
        "medqa",
        "Factor IX is in hemophilia B.\nFinally, option D\nIt is the contact one.",
        None,
        None,
    ),
    ("medqa", "The PTT alone is long.\nFinally, D.", "D", "bare-letter"),
    ("medqa", "The PTT alone is long.\nTherefore, option E.", None, None),  # no such option
    # the last line, a letter under a label; a label that says it is the answer, anywhere
    ("medqa", "The PTT alone is long.\nChoice: D", "D", "bare-letter"),
    ("medqa", "The PTT alone is long.\n**Option:** (D)", "D", "bare-letter"),
    ("medqa", "The PTT alone is long.\nChoice: E", None, None),  # no such option
    # higher up, such lines may walk through the options
    ("medqa", "Option: C\nWrong: IX is B.\nOption: D\nRight: XII.", None, None),
    ("medqa", "Answer choice: D, since the PTT alone is long.", "D", "correct-option"),
    ("medqa", "Final choice: (D)\nThe contact pathway is the one.", "D", "correct-option"),
    ("medqa", "Answer option: Factor XII", "D", "correct-option"),
    ("medqa", "Wrong answer choice: C\nD", "D", "bare-letter"),
    # the last of a list, not a choice: "the final option is D"
    ("medqa", "The final option is D, a factor of the contact pathway.", None, None),
    # without its full stop, "Option C" may head a paragraph on C, as "Option C:" does
    ("medqa", "Factor IX is in hemophilia B.\nOption D", None, None),
    (
        "medqa",
        "Option C\nFactor IX is in hemophilia B.\nOption D\nIt is the contact one.",
        None,
        None,
    ),
    # the writer's own choice, made: all of the last sentence, not a choice gone back on
    ("medqa", "The PTT alone is long. I chose option D.", "D", "bare-letter"),
    ("medqa", "The PTT alone is long.\nSo, I went with (D).", "D", "bare-letter"),
    ("medqa", "I selected D!", "D", "bare-letter"),
    ("medqa", "I chose D at first.", None, None),
    ("medqa", "I chose D, but the PT rules it out.", None, None),
    ("medqa", "I picked E.", None, None),  # no such option
    # a choice to make, contracted: "I'll", "I'd"
    ("medqa", "All told, I'll go with option D.", "D", "correct-option"),
    ("medqa", "I’d choose (D) here.", "D", "correct-option"),
    ("medqa", "I'd pick Factor XII", "D", "correct-option"),
    # the claim names what the question asks for, the letter first or last
    ("medqa", "Bradykinin is low.\nD is the most likely diagnosis.", "D", "bare-letter"),
    ("medqa", "Bradykinin is low. The most likely deficiency is D.", "D", "bare-letter"),
    ("medqa", "So the best next step in management is option (C).", "C", "bare-letter"),
    ("medqa", "The most likely diagnosis is E.", None, None),  # no such option
    ("medqa", "If the most likely deficiency is D, the PTT is long.", None, None),
    ("medqa", "The most likely deficiency is not D.", None, None),
    ("medqa", "Vitamin K is the correct answer.", None, None),  # no option's letter
    # "I would say" is no option I (ten options)
    ("medxpert", "The answer is I would say B.", "B", "answer-is"),
    ("medxpert", "Answer: I think it is Methadone", "B", "answer-label"),
    ("medxpert", "The answer is I.", "I", "answer-is"),
    ("medqa", "## Final Answer\n\n**B. Factor VIII**", "B", "final-answer"),
    ("medqa", "Answer:\n\nC", "C", "answer-label"),
    ("medqa", "**Answer: C**", "C", "answer-label"),
    ("medqa", "The correct option is B.", "B", "correct-option"),
    # the option phrases as labels ("Correct option: D"), as an answer label is written
    ("medmcqa", "Correct option: D", "D", "correct-option"),
    (
        "medmcqa",
        "Upper lip is short.\n**Correct Option:** (D) Hypotonic upper lip",
        "D",
        "correct-option",
    ),
    ("medqa", "Selected choice: C", "C", "correct-option"),
    ("medqa", "The chosen option: Factor IX", "C", "correct-option"),
    ("medqa", "Correct option: E", None, None),  # no such option: nothing else is read
    ("medqa", "The correct option: it depends on the mixing study.", None, None),
    ("medqa", "$\\boxed{\\text{(C) Factor IX}}$", "C", "boxed"),
    ("medqa", "Answer: The most likely option is (C)", "C", "correct-option"),
    ("medqa", "Weighing everything, my choice is option C.", "C", "correct-option"),
    ("medqa", "Weighing everything.\nMy choice: C", "C", "correct-option"),
    ("medqa", "**My final choice:** (C) Factor IX", "C", "correct-option"),
    ("medqa", "My selection: E", None, None),  # no such option
    ("medqa", "Answer: the defect is in (D), since the PT is normal.", "D", "answer-label"),
    (
        "medqa",
        "<think>Maybe the answer is A, since factor VII has the shortest half-life... no, the "
        "PT is normal.</think>\n\nThe answer is D.",
        "D",
        "answer-is",
    ),
    ("medqa", "Answer: E", None, None),
    ("medqa", "The answer is (F) Factor XI.", None, None),
    ("medqa", "A\nB", None, None),
    ("medqa", "The answer is A or B; the data do not allow a decision.", None, None),
    (
        "medqa",
        "This patient has an abnormal PTT. Several factors in the intrinsic pathway could be "
        "responsible, and we would need mixing studies and factor assays to know more.",
        None,
        None,
    ),
    ("medqa", "", None, None),
    ("medqa", "   \n\n  ", None, None),
    # --- multiple choice, 4 options with similar texts (MedMCQA) ---
    ("medmcqa", "Answer: (B) Hypotonic lower lip", "B", "answer-label"),
    (
        "medmcqa",
        "In class II div 1 the lower lip is trapped behind the upper incisors and the upper "
        "lip is short and hypotonic. The answer is hypotonic upper lip.",
        "D",
        "answer-is",
    ),
    ("medmcqa", "The answer is: Hypotonic Lower lip (B)", "B", "answer-is"),
    ("medmcqa", "The answer is: **D** - Hypotonic upper lip", "D", "answer-is"),
    # --- multiple choice, 5 options (MedBullets) ---
    (
        "medbullets",
        "Bilious vomiting, delayed meconium and a squirt sign suggest Hirschsprung disease; "
        "the gold standard is a rectal suction biopsy showing absent ganglion cells.\n\n"
        "The answer is Rectal suction biopsy.",
        "D",
        "answer-is",
    ),
    (
        "medbullets",
        "Contrast enema may show a transition zone, but the most accurate test is a "
        "rectal suction biopsy.\n\nFinal Answer: \\boxed{D}",
        "D",
        "boxed",
    ),
    (
        "medbullets",
        "Let's evaluate each choice:\nA. Contrast enema: shows a transition zone.\n"
        "B. Genetic testing: not diagnostic.\nD. Rectal suction biopsy: gold standard.",
        None,
        None,
    ),
    # --- multiple choice, 10 options (MedXpertQA) ---
    ("medxpert", "Opioid withdrawal is the unifying diagnosis. The answer is I.", "I", "answer-is"),
    ("medxpert", "Answer: I", "I", "answer-label"),
    (
        "medxpert",
        "He is in opioid withdrawal after running out of oxycodone early.\n"
        "The correct answer is J. Buprenorphine-naloxone",
        "J",
        "answer-is",
    ),
    ("medxpert", "Answer: (K)", None, None),
    ("medxpert", "\\boxed{H}\n\nOseltamivir is the best choice for influenza.", "H", "boxed"),
    (
        "medxpert",
        "The symptoms are those of opioid withdrawal, not influenza.\n"
        "Therefore the best option here is methadone.",
        "B",
        "option-text",
    ),
    ("medxpert", "Answer: I think it could be several of these.", None, None),
    # a reply that stops in its list names no option by its text
    ("medxpert", "Options to weigh:\n1. Supportive therapy\n2. Methadone", None, None),
    ("medxpert", "* 9. Methadone can be misread as a cause of withdrawal", None, None),
    # an option's text against another option's letter is no answer
    (
        "medxpert",
        "Methadone is the only one that fits, which is why option J is right.",
        None,
        None,
    ),
    ("medxpert", "Methadone (B) is the best choice here.", "B", "option-text"),
    # a final phrase over a list of options names none of them, and no rule picks from it
    ("medxpert", "Final Answer:\nA. Acetaminophen\nB. Methadone\nC. Referral", None, None),
    ("medxpert", "Final Answer: A. Acetaminophen for symptomatic relief\nB. Methadone", None, None),
    ("medxpert", "The answer is B.\n\nFinal Answer:\n(A) Acetaminophen\n(B) Methadone", None, None),
    ("medcalc", "Final Answer: 1. 192.1 kg x 2.118 = 398.27 kg\n2. 40.32 kg", None, None),
    ("pubmedqa", "Final Answer: 1. Yes, there is a need.\n2. No, not all animals", None, None),
    # an item alone, or items that do not follow one another, are no list
    ("medxpert", "The correct answer is:\nB. Methadone\n\nIt treats withdrawal.", "B", "answer-is"),
    ("medxpert", "Final Answer:\nB. Methadone\nD. is wrong: tapering is slow", "B", "final-answer"),
    # a lone letter after the item of the letter before it is the list going on, cut off
    ("medxpert", "F. Supportive therapy\nG. Naloxone administration\nH", None, None),
    ("medxpert", "F. Supportive therapy\nG. Naloxone administration\n\nB", "B", "bare-letter"),
    # --- yes / no / maybe (PubMedQA) ---
    # the last item of a list of the possible answers is no answer
    ("pubmedqa", "Possible answers:\n\nA) Yes\nB) No", None, None),
    ("pubmedqa", "The choices:\n1. yes\n2. no\n3. maybe", None, None),
    ("pubmedqa", "Steps:\n1. Read the abstract.\n2. No", "no", "yesno-word"),
    ("pubmedqa", "**Answer:** Yes", "yes", "answer-label"),
    (
        "pubmedqa",
        "Readmission rates did not increase while length of stay fell for all four "
        "categories. Therefore, the answer is no.",
        "no",
        "answer-is",
    ),
    ("pubmedqa", "Final answer: maybe", "maybe", "final-answer"),
    (
        "pubmedqa",
        "Length of stay fell by 11-22% with stable readmission rates.\n"
        "In conclusion, earlier discharge did not harm quality of care, so no.",
        "no",
        "yesno-word",
    ),
    ("pubmedqa", "The answer is not yes, but rather maybe.", "maybe", "answer-is"),
    ("pubmedqa", "Yes, yes, yes.", "yes", "yesno-word"),
    # a final line that names two is no answer: it lists them, or says one and hedges
    ("pubmedqa", "Yes, no, maybe.", None, None),
    ("pubmedqa", "No, it is too early to say yes.", None, None),
    (
        "pubmedqa",
        "We must decide whether the answer is yes or no.\n\nThe readmission rates were "
        "unchanged.\nAnswer: no",
        "no",
        "answer-label",
    ),
    ("pubmedqa", "$\\boxed{\\text{No}}$", "no", "boxed"),
    (
        "pubmedqa",
        "Answer: Yes.\n\nExplanation: there was no significant rise in readmissions.",
        "yes",
        "answer-label",
    ),
    (
        "pubmedqa",
        "The study population is heterogeneous and the authors draw cautious conclusions.",
        None,
        None,
    ),
    # --- numeric (MedCalc-Bench) ---
    ("medcalc", "answer: 1,234.5 mL", "1234.5", "answer-label"),
    ("medcalc", "The answer is -1.39 L", "-1.39", "answer-is"),
    # a yes/no alone on a line near the end, the reason for it after
    ("pubmedqa", "No.\nThe study found no difference.", "no", "yesno-word"),
    ("pubmedqa", "**Maybe**\n\nThe trial was too small to say.", "maybe", "yesno-word"),
    ("pubmedqa", "Yes.\nNo.\nThe data are mixed.", None, None),
    ("pubmedqa", "It helps.\nThe study found no difference.", None, None),
    # a formula's first term is no answer; nor is what a "wrong answer" says
    ("medcalc", "Final Answer: 3.14 * (QT2 - QT1) + 1", None, None),
    ("medcalc", "The answer is -1.39 + (0.2 × 3) L", None, None),
    ("medcalc", "FWD = -1.39 L.\n3. Wrong answer: The patient has Stage 2 AUD", None, None),
    ("medcalc", "The answer is -1.39 L; the incorrect answer is 5 L.", "-1.39", "answer-is"),
    ("medcalc", "The answer is *-1.39* L", "-1.39", "answer-is"),
    # markdown's italics after a number are no formula
    ("medcalc", "**Answer:** -1.39 *(free water deficit)*", "-1.39", "answer-label"),
    ("medcalc", "The deficit is -1.39 *(Adrogue formula)*.", "-1.39", "number"),
    (
        "medcalc",
        "Total body water = 0.5 × 70 kg = 35 L.\nFWD = 35 × (136/140 − 1) = −1.0 L\n\n"
        "Answer: −1.0 L",
        "-1",
        "answer-label",
    ),
    (
        "medcalc",
        "QTc = QT + 154 × (1 − RR) = 330 + 154 × 0.189 = 359.106 msec\n"
        "Therefore, the patient's corrected QT interval is 359.106 msec.",
        "359.106",
        "number",
    ),
    ("medcalc", "The Centor score is 2.\n\n**Final Answer: 2**", "2", "final-answer"),
    ("medcalc", "The answer is approximately 56.667 mm Hg.", "56.667", "answer-is"),
    ("medcalc", "Final Answer: ≈ 1.71", "1.71", "final-answer"),
    ("medcalc", "Answer: ~3.36 mg", "3.36", "answer-label"),
    ("medcalc", "Answer: The patient's CURB-65 score is 3.", "3", "answer-label"),
    ("medcalc", "$\\boxed{-2}$", "-2", "boxed"),
    ("medcalc", "The answer is 1.5e-3 mg/dL", "0.0015", "answer-is"),
    ("medcalc", "The answer is 1,500 mL/day.", "1500", "answer-is"),
    ("medcalc", "The answer is 12%.", "12", "answer-is"),
    ("medcalc", "$\\boxed{1.2 \\times 10^{3}}$", "1200", "boxed"),
    ("medcalc", "Answer: 3-4 points", None, None),
    # a sentence with several numbers states the one its "is" leads to
    (
        "medcalc",
        "Final Answer:\nThe corrected QT interval for a heart rate of 74 bpm and a QT interval "
        "of 330 msec is 359 msec.",
        "359",
        "final-answer",
    ),
    ("medcalc", "Answer: In the 2015 guideline the dose is 5 mg.", "5", "answer-label"),
    ("medcalc", "Answer: Based on the 2 criteria met, the Wells score: 3.", "3", "answer-label"),
    # where no "is" leads to one, its first; a leading number is the one stated
    ("medcalc", "Answer: a score of 4 (2 for age, 2 for HR)", "4", "answer-label"),
    ("medcalc", "The answer is 3 points: 1 for age, 2 for HR.", "3", "answer-is"),
    ("medcalc", "Answer: about 7 points, as 3 + 4 is 7", "7", "answer-label"),
    ("medcalc", "Answer: The QTc of 412 msec is normal.", "412", "answer-label"),
    # a list's item number is no answer, where the reply stops in its list
    ("medcalc", "1. No history of PE.\n2. Not pregnant.\n5. She has no history of", None, None),
    ("medcalc", "Steps:\n(2) the heart rate", None, None),
    ("medcalc", "Steps first.\n**3.** Add the points", None, None),
    ("medcalc", "The score:\n10.", "10", "number"),  # a number alone is one
    ("medcalc", "It adds up to 5 points", "5", "number"),
    ("medcalc", "So the score is about **7** points.", "7", "number"),
    ("medcalc", "Hence the deficit was therefore −2.5 L", "-2.5", "number"),
    ("medcalc", "The estimated GFR is: $62$ mL/min", "62", "number"),
    # the number must follow its "is": none is stated here
    ("medcalc", "The criteria used here is a 2015 World Health Organization standard", None, None),
    ("medcalc", "The result is not clear from 3 readings", None, None),
    ("medcalc", "The answer is 1,5 L", None, None),
    (
        "medcalc",
        "The patient's HAS-BLED score cannot be determined from the information given.",
        None,
        None,
    ),
    (
        "medcalc",
        "<think>\nChild-Pugh: bilirubin 3, albumin 2, INR 2, ascites 1, encephalopathy 1\n"
        "</think>\n\nThe patient's Child-Pugh score is 9.",
        "9",
        "number",
    ),
    # a "no" or "yes" used as a word of a sentence is no answer (real smollm2 replies)
    ("pubmedqa", "There is no doubt that the treatment improves survival.", None, None),
    ("pubmedqa", "The study found no significant difference between the groups.", None, None),
    ("pubmedqa", "The data do not support a yes answer.", None, None),
    (
        "pubmedqa",
        "I chose to answer this question with no answer as there is no answer provided.",
        None,
        None,
    ),
    ("pubmedqa", "I would say no because the effect was small.", "no", "yesno-word"),
    ("pubmedqa", "Yes it does.", "yes", "yesno-word"),
    # an "=" in an explanation of the number stated is not the answer's (MedCalc-Bench)
    ("medcalc", "Answer: 356.25 msec (QTc = QT + 1.75 × (HR − 60))", "356.25", "answer-label"),
    ("medcalc", "Answer: 4 (confusion = 1, urea = 1, RR = 1, age = 1)", "4", "answer-label"),
    ("medcalc", "The patient's BMI is 24.2 kg/m², given weight = 70 kg.", "24.2", "number"),
    ("medcalc", "The QTc is 356 msec, calculated as QTc = 330 + 1.75 × 15.", "356", "number"),
    ("medcalc", "Answer: 70 / 1.75^2 = 22.9", "22.9", "answer-label"),  # a sum worked out
    ("medcalc", "The BMI is calculated as 70/1.75^2 = 22.9", "22.9", "number"),
    # option texts match across curly and straight apostrophes, accents and markdown
    ("infection", "The most likely diagnosis is Crohn's disease.", "A", "option-text"),
    ("infection", "Answer: Meniere disease", "D", "answer-label"),
    ("infection", "Answer: *Entamoeba histolytica*", "E", "answer-label"),
    # a genus written short is no option letter ("E. coli" is not E)
    ("infection", "Answer: E. coli", None, None),
    ("infection", "The answer is C. difficile colitis.", "C", "answer-is"),
    ("infection", "The correct answer is H. pylori.", None, None),
    ("infection", "Answer: E. Entamoeba histolytica", "E", "answer-label"),
    # a letter in quotes, as the embedded model completes a forced answer's sentence; two
    # letters in quotes are two answers
    ("medqa", "The final answer is 'D'", "D", "final-answer"),
    ("medqa", 'The final answer is "C."', "C", "final-answer"),
    ("medqa", "The final answer is “D”, Factor XII.", "D", "final-answer"),
    ("medqa", "Answer: 'D. Factor XII'", "D", "answer-label"),
    ("medqa", "The answer is 'D', since bradykinin is low.", "D", "answer-is"),
    ("medqa", "The answer is 'B' or 'D'", None, None),
    ("medqa", "The answer is 'D. Factor IX'", None, None),  # D with C's text
    # the prompt's "Answer: X" written as it was shown (the embedded model on MedCalc-Bench):
    # no answer, and what the text stated before it is read
    ("medcalc", "The Fibrosis-4 index is approximately 2.9.\n\nAnswer: X", "2.9", "number"),
    ("medcalc", "The patient's Fibrosis-4 (FIB-4) index is 1.\n\nThe answer is: X", "1", "number"),
    ("medcalc", "Score = 3\n**Answer:** X\n", "3", "number"),
    ("medcalc", ":\nAnswer: X", None, None),
    ("medcalc", "Answer: X\n\nThe answer is: 3.91", "3.91", "answer-is"),
    ("medqa", "The answer is B.\nAnswer: X", "B", "answer-is"),
    ("medqa", "B\nAnswer: (X)", "B", "bare-letter"),
    ("medqa", "Answer: X", None, None),
    ("medqa", "Answer: X. Factor VII", None, None),  # a letter that is no option, and A's text
    ("pubmedqa", "So yes, it is.\nAnswer: X", "yes", "yesno-word"),
    ("free", "Answer: X", "X", "answer-label"),  # a free answer may be X (the chromosome)
    # --- free text ---
    ("free", "Answer: Hirschsprung disease.", "Hirschsprung disease", "answer-label"),
    ("free", "Hirschsprung disease", "Hirschsprung disease", "whole-text"),
    ("free", "It could be several things.\nMore tests are needed.", None, None),
]


@pytest.mark.parametrize(
    ("problem_key", "text", "answer", "method"),
    CASES,
    ids=[f"{i:02d}-{case[0]}" for i, case in enumerate(CASES)],
)
def test_extract_answer(
    problem_key: str, text: str, answer: str | None, method: str | None
) -> None:
    expected = None if answer is None or method is None else Extraction(answer, method)
    assert extract_answer(text, PROBLEMS[problem_key]) == expected


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("The answer is: X = 1.2\n\nThe answer is: X = 1", "1.2"),  # "1" of "1.2", cut
        ("The answer is 7", None),  # 7 or 75: the cap does not say
        ("The answer is 1.2 mg", "1.2"),  # a number the text goes on after is whole
        ("The answer is 1.", None),
    ],
)
def test_a_number_the_token_cap_cut_short_is_not_read(text: str, answer: str | None) -> None:
    found = extract_answer(text, MEDCALC, cut_off=True)
    assert (found.answer if found else None) == answer
    assert extract_answer(text, MEDCALC) is not None  # not cut off: read as it stands
    assert extract_answer("Answer: B", MEDQA, cut_off=True) == Extraction("B", "answer-label")


@pytest.mark.parametrize(
    ("problem_key", "text", "answer"),
    [
        # the start of "yes, no, maybe" cut off: the list's first word is no answer
        ("pubmedqa", "The answer is yes, no, maybe. The answer is yes,", None),
        ("pubmedqa", "The answer is yes, no or", None),
        ("pubmedqa", "Weighing it all, no. The answer is yes", "yes"),  # nothing goes on
        ("pubmedqa", "The answer is no.\nSo the study, and", "no"),
        # one answer said again and again is no list to read on
        ("pubmedqa", "Yes, yes, yes,", "yes"),
        ("pubmedqa", "Answer: No, no, no, no,", "no"),
        ("medqa", "The answer is D or", None),
        ("medqa", "The answer is (D), (C),", None),
        ("medqa", "The answer is D. Then C,", "D"),
    ],
)
def test_a_list_the_token_cap_cut_short_is_not_read(
    problem_key: str, text: str, answer: str | None
) -> None:
    found = extract_answer(text, PROBLEMS[problem_key], cut_off=True)
    assert (found.answer if found else None) == answer


@given(st.text(alphabet="ab1_ \t\n.é", max_size=12), st.integers(0, 12))
def test_a_word_before_is_found_as_the_pattern_found_it(line: str, at: int) -> None:
    from thinktree import extraction as x

    at = min(at, len(line))
    assert x._word_ends_at(line, at) == bool(re.search(r"[^\W\d_]\s+$", line[:at]))


def test_extraction_is_frozen() -> None:
    extraction = Extraction("B", "boxed")
    with pytest.raises(AttributeError):
        extraction.answer = "C"  # type: ignore[misc]


def test_nested_braces_in_boxed() -> None:
    found = extract_answer(r"\boxed{\text{\textbf{Rectal suction biopsy}}}", MEDBULLETS)
    assert found == Extraction("D", "boxed")


def test_boxed_outranks_a_later_answer_phrase() -> None:
    assert extract_answer("\\boxed{C}\nSome say the answer is B.", MEDQA) == Extraction(
        "C", "boxed"
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.39, "1.39"),
        (-2.0, "-2"),
        (1500.0, "1500"),
        (0.0, "0"),
        (-0.0, "0"),
        (0.00001, "0.00001"),
        (1e16, "1e16"),
        (1.5e-7, "1.5e-7"),
        (123456789.125, "123456789.125"),
    ],
)
def test_canonical_number(value: float, text: str) -> None:
    assert canonical_number(value) == text


_LETTERS = string.ascii_uppercase[:10]
_OPTION_TEXT = st.text(alphabet=string.ascii_letters + " -", min_size=1, max_size=40).filter(
    str.strip
)


@st.composite
def _choice_problems(draw: st.DrawFn) -> tuple[Problem, str]:
    """A choice problem with 2 to 10 options, and one of its option letters."""
    count = draw(st.integers(min_value=2, max_value=10))
    texts = draw(st.lists(_OPTION_TEXT, min_size=count, max_size=count))
    options = dict(zip(_LETTERS, texts, strict=False))
    problem = Problem(id="p", question="q", answer_type=AnswerType.CHOICE, options=options)
    return problem, draw(st.sampled_from(sorted(options)))


_REASONING = st.sampled_from(
    [
        "... reasoning ...",
        "The PTT is prolonged and the PT is normal, so the intrinsic pathway is involved.",
        "Let's think step by step.\nFirst, consider the vital signs.\nThey are stable.",
        "Option A is unlikely. Option C does not explain the rash either.",
    ]
)


@given(_choice_problems(), _REASONING)
def test_answer_label_gives_any_option_letter(case: tuple[Problem, str], reasoning: str) -> None:
    problem, letter = case
    found = extract_answer(f"{reasoning}\nAnswer: {letter}", problem)
    assert found is not None
    assert found.answer == letter


_NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(10**15), max_value=10**15),
)


@given(_NUMBERS)
def test_stated_number_grades_correct(x: float) -> None:
    problem = Problem(id="n", question="q", answer_type=AnswerType.NUMERIC, answer=str(x))
    found = extract_answer(f"The answer is {x}", problem)
    assert found is not None
    assert grade(found.answer, problem) is True


# Pieces of answer phrases and of what stands near them, mixed at random: the phrase
# patterns are tried only where "answer" is, and must find what a scan of every position
# finds, Unicode's case folding and spaces included.
_PHRASE_PIECES = [
    "answer", "Answer", "ANSWER", "answers", "unanswered", "final", "Final", "FINAL",
    "wrong", "Incorrect", "FALSE",
    "correct", "most", "likely", "most likely", "almost", "best", "right", "true",
    "x_final", "final_", "9", "is", "would be", "=", ":", "*", "_", "to", "the", "this",
    "question", "B", "(C)", "not", ".", ",", " ", " ", "  ", "\n", "\t", "\x1c",
    "option", "Option", "choice", "CHOICE", "response", "selection", "select", "choose", "pick",
    "go", "with", "go with", "I", "i", "my", "My", "would", "will", "appropriate", "adoption",
    "D", "one", "was", "is the correct answer", " D is the right one", "selected", "chosen",
    "I'll", "I’d", "i'", "'", "’", "ll", "d", "Hawai'i",
]  # fmt: skip
_UNICODE_PIECES = [
    "anſwer", "beſt", "li\u212aely", "İ", "ı", "ß", "：", "\u00a0", "\u2003", "é", "\u0301",
    "choıce", "ſelect", "pic\u212a", "İ would",
]  # fmt: skip


def _answer_phrases(text: str) -> tuple[list[re.Match[str]], list[re.Match[str]]]:
    """The matches of ``_ANSWER_IS`` and ``_ANSWER_LABEL`` where the module's phrase finder
    finds them, in the order a scan of the text finds them."""
    from thinktree import extraction as x

    answer_is: list[re.Match[str]] = []
    answer_label: list[re.Match[str]] = []
    for start, _, _ in reversed(list(x._answer_spans(text, x._lowered(text)))):
        if (match := x._ANSWER_IS.match(text, start)) is not None:
            answer_is.append(match)
        elif (match := x._ANSWER_LABEL.match(text, start)) is not None:
            answer_label.append(match)
    return answer_is, answer_label


def _finds(text: str) -> list[tuple[str, int, int, dict[str, str | None]]]:
    from thinktree import extraction as x

    answer_is, answer_label = _answer_phrases(text)
    return [
        (name, m.start(), m.end(), m.groupdict())
        for name, matches in (
            ("is", answer_is),
            ("label", answer_label),
            ("option", list(x._correct_options(text, x._lowered(text)))),
            ("named", list(x._options_named(text, x._lowered(text)))),
        )
        for m in matches
    ]


def _scanned(text: str) -> list[tuple[str, int, int, dict[str, str | None]]]:
    from thinktree import extraction as x

    return [
        (name, m.start(), m.end(), m.groupdict())
        for name, pattern in (
            ("is", x._ANSWER_IS),
            ("label", x._ANSWER_LABEL),
            ("option", x._CORRECT_OPTION),
            ("named", x._OPTION_IS_CORRECT),
        )
        for m in pattern.finditer(text)
    ]


@settings(max_examples=400)
@given(
    st.lists(st.sampled_from(_PHRASE_PIECES), max_size=40),
    st.lists(st.sampled_from(_PHRASE_PIECES + _UNICODE_PIECES), max_size=40),
)
def test_answer_phrases_are_found_as_a_scan_of_every_position_finds_them(
    ascii_pieces: list[str], pieces: list[str]
) -> None:
    for text in ("".join(ascii_pieces), "".join(pieces)):
        assert _finds(text) == _scanned(text)


@pytest.mark.parametrize(
    "text",
    [
        "The " + "most likely correct " * 40 + "answer is B.",
        "Answer: A. " + "final " * 60 + "answer: C",
        "x" * 300 + " true answer = 4",
        "the answer is the answer is B",
        "ANSWER：D, or the correct answer would be (C)",
        "The beſt answer is B; the li\u212aely answer: C",
        "I would go   with B, my final  selection is C and the most  appropriate option = D",
        "The correct option is the correct option is B. I choose I pick C",
        "Adoption is not my choice; I\tWILL\nGO WITH (A). My choıce is B, I ſelect C",
    ],
)
def test_long_and_repeated_answer_phrases_are_found_whole(text: str) -> None:
    assert _finds(text) == _scanned(text)


@pytest.mark.parametrize(
    "text",
    ["", "\n\n", "A", "one\n\n  **two**  \n", "1\n2\n3\n4\n\n# 5\n- \n", "x\r\ny\u2028z"],
)
def test_tail_lines_are_the_last_non_empty_lines(text: str) -> None:
    from thinktree import extraction as x

    every = [x._LINE_DECORATION.sub("", x._clean(line)) for line in text.splitlines()]
    every = [line for line in every if line]
    for count in (1, 2, 3):
        assert x._tail_lines(text, count) == every[-count:]


# Phrases are found from the last "answer" back, as far as their bodies are read: they must
# come in the order, and with the methods, that scans of every position give them.
_BODY_PIECES = [
    "B", "C.", "(D) Hypotonic upper lip", "not clear", "not A, it is C", "let's see", "42",
    "\nFinal Answer\n", "\n**Final Answer**\n\n", "\n", "**", "I choose ", "the correct option is ",
]  # fmt: skip


def _scanned_bodies(text: str) -> list[tuple[str, object]]:
    """(method, body) as :func:`_phrase_bodies` yields them: a body may be its _REJECT."""
    from thinktree import extraction as x

    found: dict[int, tuple[int, str]] = {}
    for m in x._ANSWER_IS.finditer(text):
        final = "final" in m["qualifiers"].lower()
        found[m.end()] = (m.start(), "final-answer" if final else "answer-is")
    for m in x._ANSWER_LABEL.finditer(text):
        found[m.end()] = (m.start(), "final-answer" if m["final"] else "answer-label")
    for m in x._FINAL_HEADING.finditer(text):
        found[m.end()] = (m.start(), "final-answer")
    for pattern in (x._CORRECT_OPTION, x._OPTION_IS_CORRECT):
        for m in pattern.finditer(text):
            found[m.end()] = (m.start(), "correct-option")
    last_first = sorted(found.items(), key=lambda item: item[1][0], reverse=True)
    return [(method, body) for end, (_, method) in last_first if (body := x._body_at(text, end))]


@settings(max_examples=300)
@given(st.lists(st.sampled_from(_PHRASE_PIECES + _BODY_PIECES + _UNICODE_PIECES), max_size=40))
# casefold() keeps a dotless i, which IGNORECASE takes for an "i": the option phrase was missed
@example(["choıce", " D is the right one"])
@example(["ſelect", "İ would", " D is the right one"])
def test_phrase_bodies_come_last_first_as_scans_order_them(pieces: list[str]) -> None:
    from thinktree import extraction as x

    text = "".join(pieces)
    assert list(x._phrase_bodies(text)) == _scanned_bodies(text)


@pytest.mark.parametrize(
    "text",
    [
        "The answer is B.\nAnswer: C",
        "Final Answer\nB\nI choose C. The correct answer is not clear.\nAnswer: let's see",
        "The most likely answer is A; I would go with B, my final answer: C\nFinal Answer\n",
        "the correct option is B " * 3 + "answer: " * 3,
        "Option A is wrong, the best choice is C.\nFinal answer: B",
        "Answer: B. I choose C",
        "The answer is not clear. Option C fits.\nFinal Answer\nAnswer: let's see",
        "The correct option is B, but option D is the correct answer.\nAnswer: C",
        "Adoption D is the correct answer; Choice  D was the best one",
    ],
)
def test_phrase_bodies_of_mixed_phrases_come_last_first(text: str) -> None:
    from thinktree import extraction as x

    assert list(x._phrase_bodies(text)) == _scanned_bodies(text)


@pytest.mark.parametrize(
    "text",
    [
        "{" * 50 + "\\boxed{B}" + "}" * 50,
        "x {a} " * 40 + "\\boxed{\\text{B}} then \\boxed{C",
        "\\boxed{1} " + "{a}" * 40 + " \\fbox {D}",
        "} \\boxed{{B}} {",
        "word " * 30 + "\\boxed{\\frac{1}{2}} and {x} " + "word " * 30 + "\\boxed{2",
    ],
)
def test_boxed_contents_pair_braces_as_a_walk_over_every_character_does(text: str) -> None:
    from thinktree import extraction as x

    closing: dict[int, int] = {}
    open_braces: list[int] = []
    for index, char in enumerate(text):
        if char == "{":
            open_braces.append(index + 1)
        elif char == "}" and open_braces:
            closing[open_braces.pop()] = index
    starts = [m.end() for m in x._BOXED.finditer(text)]
    assert x._boxed_contents(text) == [text[s : closing[s]] for s in starts if s in closing]


def test_x_answers_a_choice_that_has_an_option_x() -> None:
    """Where X is an option, "Answer: X" is an answer, not the prompt's placeholder."""
    letters = [chr(ord("A") + i) for i in range(24)]
    problem = Problem(
        id="many-options",
        question="Which?",
        answer_type=AnswerType.CHOICE,
        options={letter: f"option {letter}" for letter in letters},
        answer="X",
    )
    assert extract_answer("The answer is B.\nAnswer: X", problem) == Extraction("X", "answer-label")


_DECORATED_LINE = re.compile(r"^(?:[\s>#*_]|-(?=\s))+|[\s*_]+$")  # what the rule was


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=" \t\u00a0\u2003*_->#aB1.", max_size=16))
def test_a_line_loses_its_decoration_as_one_pattern_took_it(line: str) -> None:
    """The end's decoration is taken by a walk back over it (a pattern for the end tried
    every start of a long run of spaces: seconds for a model's line of 20,000)."""
    from thinktree import extraction as x

    assert x._undecorated(line) == _DECORATED_LINE.sub("", line)
