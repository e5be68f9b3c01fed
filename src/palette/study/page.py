"""The observer's page: plain HTML and JavaScript, no framework, so the display time and the keys are exact.

The pair appears on an animation frame once both images are decoded, and is hidden on the first frame at which the
display time has passed (less half a frame), so it stays on screen for the display time to within a frame; the
measured time goes back with the answer. Times are ``performance.now()`` milliseconds from that first frame. An answer
that cannot reach the server is kept in the page and sent again until the server takes it.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Image study</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; background: #f4f4f4; color: #222; }
  main { max-width: 980px; margin: 0 auto; padding: 24px; }
  .screen { display: none; }
  body[data-state="instructions"] #instructions, body[data-state="resume"] #resume,
  body[data-state="done"] #done, body[data-state="error"] #error { display: block; }
  body[data-state="fixation"] #trial, body[data-state="showing"] #trial, body[data-state="hidden"] #trial,
  body[data-state="sending"] #trial, body[data-state="retrying"] #trial { display: block; }
  h1 { font-size: 1.5em; }
  button { font-size: 1.1em; padding: 8px 24px; }
  #question { text-align: center; font-size: 1.3em; margin: 8px 0 16px; }
  #pair { display: flex; gap: 32px; justify-content: center; }
  .panel { width: min(42vw, 420px); aspect-ratio: 1; background: #888; cursor: pointer; border: 4px solid transparent;
           box-sizing: content-box; background-clip: content-box; }
  .panel img { width: 100%; height: 100%; display: block; visibility: hidden; }
  body[data-state="showing"] .panel img { visibility: visible; }
  .panel.chosen { border-color: #2a6; }
  .key { text-align: center; margin-top: 6px; color: #555; }
  #progress { height: 10px; background: #ddd; border-radius: 5px; overflow: hidden; margin: 8px 0 4px; }
  #bar { height: 100%; width: 0; background: #2a6; }
  #count { font-size: 0.9em; color: #555; text-align: right; }
  #message { min-height: 1.4em; text-align: center; color: #b40; margin-top: 12px; }
</style>
</head>
<body data-state="loading">
<main>
  <section id="instructions" class="screen">
    <h1>Which image is a photograph?</h1>
    <p>In each of <b class="total"></b> trials you will see two images side by side for
       <b class="seconds"></b> seconds. One of them is a photograph taken with a camera; the other one is not.</p>
    <p>Answer the question <b class="question"></b> by clicking the image, or with the <b>&larr;</b> and
       <b>&rarr;</b> arrow keys. You can answer while the images are on screen or after they disappear;
       go with your first impression. A few trials are easy checks of attention.</p>
    <p>Each answer is saved as you give it. If you close the page, open it again in this browser to continue
       where you stopped.</p>
    <p><label><input type="checkbox" id="consent"> I agree to take part. My answers and response times are
       recorded without my name.</label></p>
    <button id="start" disabled>I am ready: start</button>
  </section>
  <section id="resume" class="screen">
    <h1>Welcome back</h1>
    <p>You have answered <b id="resume-count"></b> of <b class="total"></b> trials.</p>
    <button id="continue">Continue</button>
  </section>
  <section id="trial" class="screen">
    <div id="progress" role="progressbar" aria-valuemin="0"><div id="bar"></div></div>
    <div id="count"></div>
    <div id="question"></div>
    <div id="pair">
      <div><div class="panel" id="left"><img alt="left image"></div>
           <div class="key">&larr; left</div></div>
      <div><div class="panel" id="right"><img alt="right image"></div><div class="key">right &rarr;</div></div>
    </div>
    <div id="message"></div>
  </section>
  <section id="done" class="screen">
    <h1>Thank you</h1>
    <p>All your answers are recorded. You can close this page.</p>
  </section>
  <section id="error" class="screen"><h1>Something went wrong</h1><p id="error-text"></p></section>
</main>
<script>
const CONFIG = __CONFIG__;
const $ = (s) => document.querySelector(s);
let trial = null;  // {position, onset, shownMs, answered}

function setState(state) { document.body.dataset.state = state; }
function fill() {
  document.querySelectorAll(".total").forEach(e => e.textContent = CONFIG.trials);
  document.querySelectorAll(".seconds").forEach(e => e.textContent = CONFIG.display_ms / 1000);
  document.querySelectorAll(".question").forEach(e => e.textContent = CONFIG.question);
  $("#question").textContent = CONFIG.question;
}
function showProgress(answered, total) {
  const bar = $("#progress");
  bar.setAttribute("aria-valuemax", total);
  bar.setAttribute("aria-valuenow", answered);
  $("#bar").style.width = (100 * answered / total) + "%";
  $("#count").textContent = answered + " / " + total;
}
const sleep = (ms) => new Promise(r => setTimeout(r, ms));
const frame = () => new Promise(r => requestAnimationFrame(r));

// POST until the server answers: a lost connection or a restarting server is waited out, never lost
async function post(url, body) {
  for (let wait = 500; ; wait = Math.min(2 * wait, 4000)) {
    try {
      const response = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                         body: JSON.stringify(body || {}), credentials: "same-origin"});
      if (response.status < 500) {
        $("#message").textContent = "";
        return {status: response.status, data: await response.json()};
      }
    } catch (err) { /* the server is unreachable: try again */ }
    setState("retrying");
    $("#message").textContent = "The connection to the server is lost; retrying. Your answers are kept.";
    await sleep(wait);
  }
}

function fail(text) { $("#error-text").textContent = text; setState("error"); }

async function loadImage(url) {
  const img = new Image();
  img.src = url;
  await img.decode();
  return img;
}

async function nextTrial() {
  const {status, data} = await post("/api/next");
  if (status !== 200) return fail(data.error || "the server refused the next trial");
  showProgress(data.answered, data.total);
  if (data.finished) return setState("done");
  setState("fixation");
  trial = {position: data.position, onset: null, shownMs: null, answered: false};
  let images;
  try {
    images = await Promise.all(["left", "right"].map(side => loadImage(`/api/image/${data.position}/${side}?` + Date.now())));
  } catch (err) {
    await sleep(1000);
    return nextTrial();  // the server went away while the images loaded: ask again
  }
  for (const [side, img] of [["left", images[0]], ["right", images[1]]]) {
    const panel = $("#" + side);
    panel.classList.remove("chosen");
    img.alt = side + " image";
    panel.querySelector("img").replaceWith(img);
    panel.style.aspectRatio = img.naturalWidth + " / " + img.naturalHeight;
  }
  await sleep(CONFIG.gap_ms);
  await frame();
  const onset = await frame();  // the pair is painted on this frame
  trial.onset = onset;
  setState("showing");
  const halfFrame = 8;
  const current = trial;
  const hide = (now) => {
    if (current !== trial || document.body.dataset.state !== "showing") return;
    if (now - onset >= CONFIG.display_ms - halfFrame) {
      current.shownMs = now - onset;
      setState("hidden");
    } else requestAnimationFrame(hide);
  };
  requestAnimationFrame(hide);
}

async function choose(side, timeStamp) {
  const state = document.body.dataset.state;
  if (!trial || trial.answered || (state !== "showing" && state !== "hidden")) return;
  trial.answered = true;
  const responseMs = timeStamp - trial.onset;
  if (state === "showing") trial.shownMs = performance.now() - trial.onset;  // the answer ends the display
  $("#" + side).classList.add("chosen");
  setState("sending");
  const {status, data} = await post("/api/answer", {position: trial.position, choice: side,
                                                    response_ms: responseMs, shown_ms: trial.shownMs});
  if (status !== 200 && status !== 409) return fail(data.error || "the answer was refused");
  await nextTrial();  // 409: answered already (a resent answer) or not handed out: the server says what is next
}

document.addEventListener("keydown", (e) => {
  if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
    e.preventDefault();
    if (!e.repeat) choose(e.key === "ArrowLeft" ? "left" : "right", e.timeStamp);
  }
});
for (const side of ["left", "right"]) $("#" + side).addEventListener("click", (e) => choose(side, e.timeStamp));
$("#consent").addEventListener("change", (e) => { $("#start").disabled = !e.target.checked; });
async function begin(e) {
  e.target.disabled = true;  // one observer per click, however fast the second one
  const {status, data} = await post("/api/start");
  if (status !== 200) return fail(data.error || "the study could not start");
  nextTrial();
}
$("#start").addEventListener("click", begin);
$("#continue").addEventListener("click", begin);

(async () => {
  fill();
  const response = await fetch("/api/state", {credentials: "same-origin"});
  const state = await response.json();
  showProgress(state.answered || 0, CONFIG.trials);
  if (!state.observer) return setState("instructions");
  if (state.finished) return setState("done");
  $("#resume-count").textContent = state.answered;
  setState("resume");
})();
</script>
</body>
</html>
"""
