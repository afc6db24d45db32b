// Portcullis: submit the same-origin refresh form as soon as the page loads. The form carries
// the CSRF token; without JavaScript the user presses "Continue" instead.
document.getElementById("refresh-form").submit();
