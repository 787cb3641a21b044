@booking
Feature: A client books a visit through WhatsApp
  The administrator understands the request, finds the free time and books the visit in the salon's CRM.

  Scenario: Booking a haircut with a chosen master for tomorrow
    When the client 79001234567 quickly writes
      | message                       |
      | Хочу записаться               |
      | на стрижку машинкой к Дмитрию |
      | завтра в 15:00                |
    And the administrator answers the client 79001234567
    Then the CRM has one booking for 79001234567
      | service          | master  | time             |
      | Стрижка машинкой | Дмитрий | 2025-11-26 15:00 |
    And the client 79001234567 gets 1 reply
