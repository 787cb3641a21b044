@context
Feature: The administrator remembers the client
  After each turn the dialog is kept for a day, the message history for a month and the client's
  preferences for three months, under the reference system's key names.

  Scenario: A turn keeps the dialog, the history and the preferences with their lifetimes
    When the client 79001234567 writes "Хочу записаться на стрижку машинкой завтра в 15:00"
    And the administrator answers the client 79001234567
    Then the client's context is kept
      | key                            | lifetime |
      | dialog:962302:79001234567      | 24 hours |
      | messages:962302:79001234567    | 30 days  |
      | preferences:962302:79001234567 | 90 days  |
