// milebatch management site: small progressive enhancements only; every
// page works without this file.
"use strict";
