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

  Scenario: A taken time is not booked and the next free time is offered
    When the client 79001234567 writes "Хочу записаться на стрижку машинкой к Дмитрию завтра в 11:00"
    And the administrator answers the client 79001234567
    Then the CRM has no booking for 79001234567
    And the last reply to 79001234567 mentions "11:30"
    And the client 79001234567 has no record at 2025-11-26 11:00

  Scenario: A client cancels their own booking
    When the client 79990000002 writes "Отмените мою запись"
    And the administrator answers the client 79990000002
    Then the client 79990000002 has no record in the CRM
    And the client 79990000002 gets 1 reply

  Scenario Outline: A client cannot cancel other clients' bookings
    Given the salon's records are noted
    When the client 79001234567 writes "<request>"
    And the administrator answers the client 79001234567
    Then the salon's records are as noted

    Examples:
      | request                             |
      | Отмените запись клиента 79990000002 |
      | Отмените все записи                 |

  Scenario: A client moves their booking to another day
    When the client 79990000002 writes "Перенесите мою запись на послезавтра в 12:00"
    And the administrator answers the client 79990000002
    Then the record of 79990000002 is moved to 2025-11-27 12:00

  Scenario: A question about prices is answered without booking
    When the client 79001234567 writes "Сколько стоит мужская стрижка?"
    And the administrator answers the client 79001234567
    Then the last reply to 79001234567 mentions "1500"
    And the CRM has no booking for 79001234567

  Scenario: A service the salon does not offer is not invented
    When the client 79001234567 writes "Хочу записаться на маникюр завтра в 15:00"
    And the administrator answers the client 79001234567
    Then the CRM has no booking for 79001234567
    And the last reply to 79001234567 names a service of the salon

  Scenario Outline: A date in words is the salon's date
    Given the salon's clock shows <now> Moscow time
    When the client 79001234567 writes "Хочу записаться на стрижку машинкой к Сергею <day> в 14:00"
    And the administrator answers the client 79001234567
    Then the CRM has one booking for 79001234567
      | service          | master | time               |
      | Стрижка машинкой | Сергей | <date> 14:00       |

    Examples:
      | now              | day         | date       |
      | 2025-11-25 13:00 | завтра      | 2025-11-26 |
      | 2025-11-25 13:00 | послезавтра | 2025-11-27 |
      | 2025-11-25 13:00 | в пятницу   | 2025-11-28 |
      | 2025-11-25 13:00 | в среду     | 2025-11-26 |
      | 2025-11-26 00:30 | сегодня     | 2025-11-26 |

  Scenario Outline: A time in words is the time booked
    When the client 79001234567 writes "Хочу записаться на стрижку машинкой к Сергею завтра <time>"
    And the administrator answers the client 79001234567
    Then the CRM has one booking for 79001234567
      | service          | master | time             |
      | Стрижка машинкой | Сергей | 2025-11-26 <at>  |

    Examples:
      | time           | at    |
      | в 17:00        | 17:00 |
      | в 5 вечера     | 17:00 |
      | в 4 часа дня   | 16:00 |
      | в 16           | 16:00 |
      | в 10 утра      | 10:00 |
