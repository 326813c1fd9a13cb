// The incoming-call ring, synthesised (two tones, 2 s on / 4 s off) so the page needs no audio file.

const TONES_HZ = [440, 480];
const ON_S = 2;
const PERIOD_MS = 6000;

export class Ringer {
  #context = null;
  #timer = null;

  start() {
    if (this.#timer !== null) return;
    this.#context = new AudioContext();
    const ringOnce = () => {
      const context = this.#context;
      const gain = context.createGain();
      gain.gain.value = 0.1;
      gain.connect(context.destination);
      for (const frequency of TONES_HZ) {
        const oscillator = context.createOscillator();
        oscillator.frequency.value = frequency;
        oscillator.connect(gain);
        oscillator.start();
        oscillator.stop(context.currentTime + ON_S);
      }
    };
    ringOnce();
    this.#timer = setInterval(ringOnce, PERIOD_MS);
  }

  stop() {
    if (this.#timer === null) return;
    clearInterval(this.#timer);
    this.#timer = null;
    this.#context.close();
    this.#context = null;
  }
}
