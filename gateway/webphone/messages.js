// What went wrong, in words a person understands, from JsSIP's failure causes and SIP codes.
import { C } from "jssip";

// ICE failed: no candidate pair got through (UDP blocked and no reachable TURN relay).
export const MEDIA_BLOCKED = "No audio: media blocked by the network (it lets no UDP through " +
  "and no TURN relay could be reached). Try another network, or ask its administrator.";

export function registrationFailure({ response, cause }, server) {
  const status = response?.status_code;
  if (status === 401 || status === 403 || status === 407 ||
      cause === C.causes.AUTHENTICATION_ERROR) {
    return "Sign-in refused: wrong user name or password.";
  }
  if (status === 404) return "Sign-in refused: this user does not exist on the gateway.";
  if (cause === C.causes.CONNECTION_ERROR) return `Cannot reach the gateway at ${server}.`;
  if (cause === C.causes.REQUEST_TIMEOUT) return "The gateway did not answer the sign-in.";
  return `Sign-in failed: ${describeStatus(response, cause)}.`;
}

export function callFailure({ cause, message }, target) {
  const status = message?.status_code;
  switch (cause) {
    case C.causes.NOT_FOUND:
      return `${target} does not exist.`;
    case C.causes.UNAVAILABLE:
      return status === 408
        ? `${target} did not answer.`
        : `${target} is offline (not signed in anywhere).`;
    case C.causes.BUSY:
      return `${target} is busy.`;
    case C.causes.REJECTED:
      return `${target} declined the call.`;
    case C.causes.NO_ANSWER:
      return `${target} did not answer.`;
    case C.causes.USER_DENIED_MEDIA_ACCESS:
      return "No access to the microphone (or camera): allow it in the browser's site " +
        "settings and call again.";
    case C.causes.INCOMPATIBLE_SDP:
    case C.causes.BAD_MEDIA_DESCRIPTION:
      return `No common media with ${target} (codecs or video refused).`;
    case C.causes.WEBRTC_ERROR:
      return "The browser could not set up the media (WebRTC error).";
    case C.causes.CONNECTION_ERROR:
      return "Lost the connection to the gateway.";
    case C.causes.ADDRESS_INCOMPLETE:
      return `${target} is not a complete address.`;
    case C.causes.RTP_TIMEOUT:
      return MEDIA_BLOCKED;
    case C.causes.CANCELED:
      return null; // Hung up before an answer: nothing went wrong.
    default:
      return `The call to ${target} failed: ${describeStatus(message, cause)}.`;
  }
}

export function mediaFailure(error) {
  if (error?.name === "NotAllowedError") {
    return "No access to the microphone (or camera): allow it in the browser's site settings.";
  }
  if (error?.name === "NotFoundError") return "No microphone (or camera) found.";
  return `Media error: ${error?.message ?? error}`;
}

function describeStatus(response, cause) {
  return response?.status_code ? `${response.status_code} ${response.reason_phrase}` : cause;
}
