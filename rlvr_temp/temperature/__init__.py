"""The one home of temperature logic (entropy window, token rule, mixtures, schedules)."""
